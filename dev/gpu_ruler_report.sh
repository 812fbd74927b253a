#!/usr/bin/env bash
# The Qwen2.5-Coder-1.5B report-grid runs of the long-context accuracy issue that are still to
# be made, fixed before any of them ran (so they are not chosen on the report grid): the window
# the dev grid picked (sink 64 + recent 1024), duo 50% with `cuda_2000steps_16k` (the best 16K
# perplexity at that window and the closest RULER pattern), the same with q4 KV, and duo 25% with
# `cuda_400steps_8k_ruler` (the dev grid's 25% pick); seeds 0 and 1 of the report grid (two
# samples each, four a cell; full attention needs seed 1 only, its seed 0 is in
# bench/results/h100-2026-12-07c-ruler/qwen_report_full.json). Before them, Qwen's 16K perplexity
# with bf16, q8 and q4 KV (the check that quantized-KV kernels keep accuracy).
#
#   device: DUO=/path/to/duo bash dev/gpu_ruler_report.sh      (Qwen in ~/.cache/duo/models)
#
# Writes RESULTS (default /tmp/duo-ruler): ppl_qwen_16k_{bf16,q8,q4}.txt and
# qwen_report_w1024_s{0,1}.{csv,json,svg}; about 7 minutes on an H100.
set -u
duo=${DUO:-/tmp/duo-ab-bn/duo}
R=${RESULTS:-/tmp/duo-ruler}
q=${QWEN:-$HOME/.cache/duo/models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf}
p=patterns/Qwen2.5-Coder-1.5B-Instruct
mkdir -p "$R"
log() { echo "$(date +%T) $*" | tee -a "$R/progress"; }
[ -x "$duo" ] && [ -f "$q" ] || { log "need DUO ($duo) and the Qwen model ($q)"; exit 2; }
for kv in bf16 q8 q4; do
  "$duo" eval ppl -m "$q" --device cuda --length 16384 --kv-type $kv > "$R/ppl_qwen_16k_$kv.txt" 2>&1
  log "ppl $kv rc=$?"
done
a=$p/cuda_2000steps_16k.tsv b=$p/cuda_400steps_8k_ruler.tsv
ruler=(eval ruler -m "$q" --device cuda --grid report --lengths 4096,8192,16384,32000 --samples 2 --sink 64 --recent 1024
       --pattern "$a")  # (duo modes need a --pattern even where @FILE names theirs)
"$duo" "${ruler[@]}" --seed 0 --modes "duo50@$a,duo50@$a+q4,duo25@$b" -o "$R/qwen_report_w1024_s0" > "$R/ruler_s0.log" 2>&1
log "report grid seed 0 rc=$?"
"$duo" "${ruler[@]}" --seed 1 --modes "full,duo50@$a,duo50@$a+q4,duo25@$b" -o "$R/qwen_report_w1024_s1" > "$R/ruler_s1.log" 2>&1
log "report grid seed 1 rc=$?"
