#!/usr/bin/env bash
# Needle-in-a-haystack accuracy of head patterns at the same retrieval ratios: a calibrated
# pattern against a seeded random one and the training-free stand-in (`duo pattern rank`),
# with full and streaming attention as the bounds. Prints a markdown table and leaves every
# eval's csv/json/svg and the patterns in OUTDIR.
#
#   scripts/compare_patterns.sh MODEL.gguf CALIBRATED.tsv OUTDIR [LENGTHS] [DEPTHS] [RATIOS]
#   e.g. scripts/compare_patterns.sh ~/.cache/duo/models/SmolLM2-135M-Instruct.Q4_1.gguf \
#          patterns/SmolLM2-135M-Instruct/cpu_48steps.tsv out/cmp 2048,4096 0,0.25,0.5,0.75,1 0.25,0.5
# Environment: DUO (the duo binary, default ./build/duo), THREADS (default 2), SEED (random
# pattern, default 1), EXTRA (more options for every eval, e.g. "--sink 64 --recent 256").
set -euo pipefail
model=$1 calibrated=$2 out=$3
lengths=${4:-2048,4096}
depths=${5:-0,0.25,0.5,0.75,1}
ratios=${6:-0.25,0.5}
duo=${DUO:-./build/duo}
threads=${THREADS:-2}
seed=${SEED:-1}
extra=${EXTRA:-}
mkdir -p "$out"

# Random gates of the calibrated pattern's shape (seeded).
python3 - "$calibrated" "$out/random.tsv" "$seed" <<'EOF'
import random, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l.strip()]
rng = random.Random(int(sys.argv[3]))
with open(sys.argv[2], "w") as f:
    for r in rows:
        f.write("\t".join(f"{rng.random():.6f}" for _ in r) + "\n")
EOF
if [ ! -f "$out/heuristic.tsv" ]; then
  "$duo" pattern rank -m "$model" -t "$threads" -o "$out/heuristic.tsv" >&2
fi

acc() {  # name, then eval options; prints the accuracy in percent (an existing OUTDIR/name.json is reused)
  local name=$1
  shift
  [ -f "$out/$name.json" ] || "$duo" eval niah -m "$model" -t "$threads" --lengths "$lengths" --depths "$depths" -o "$out/$name" $extra "$@" \
    > "$out/$name.txt" 2>&1
  python3 -c "import json,sys; print(f\"{100*json.load(open(sys.argv[1]))['accuracy']:.0f}\")" "$out/$name.json"
}

full=$(acc full --attention full)
streaming=$(acc streaming --attention streaming)
echo "| pattern | $(echo "$ratios" | sed 's/,/ | /g') |"
echo "| --- |$(echo "$ratios" | sed 's/[^,]*/ --- |/g; s/,//g')"
for p in calibrated random heuristic; do
  file=$out/$p.tsv
  [ "$p" = calibrated ] && file=$calibrated
  row="| $p |"
  for r in ${ratios//,/ }; do
    row="$row $(acc "${p}_$r" --attention duo --pattern "$file" --retrieval-ratio "$r")% |"
  done
  echo "$row"
done
echo
echo "full attention: $full%, streaming (every head sink + recent): $streaming%"
echo "(NIAH accuracy, lengths $lengths x depths $depths, $model)"
