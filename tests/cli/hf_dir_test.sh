#!/usr/bin/env bash
# ctest cli_hf_dir: every model command on Hugging Face directories (the tiny fixtures of
# tests/fixtures/hf, no fetched model needed), checked against independent numbers where there
# are some:
#  - `duo tokenize`: the ids HF tokenizers gave for each fixture's prompt;
#  - `duo logits` and `duo eval ppl` on tiny-qwen3's directory and on its GGUF twin (the same
#    weights and tokenizer as llama.cpp's converter lays them out): the same values, and the top
#    logit the one transformers computed;
#  - `duo calibrate` (a few steps), `pattern rank`, then generate / eval niah / eval ruler with
#    --attention duo and that pattern, the q8 and q4 KV types, `bench`, and `chat` in a pipe, on
#    tiny-llama-4194k (head dim 64 and 2048 positions: what KIVI and calibration samples need).
# `duo serve` on a directory: tests/serve/test_serve.py (test_hf_directory).
set -euo pipefail
duo=${1:?usage: hf_dir_test.sh path/to/duo}
root="$(cd "$(dirname "$0")/../.." && pwd)"
fx="$root/tests/fixtures/hf"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
json() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

# tokenize: HF tokenizers' ids of the fixture's prompt (BOS included where the tokenizer adds one).
for m in tiny-llama tiny-qwen2 tiny-qwen3 tiny-mistral tiny-gemma3; do
  json "$fx/$m.json" 'd["prompt"]' | tr -d '\n' > "$tmp/prompt.txt"
  want=$(json "$fx/$m.json" 'json.dumps(d["ids"], separators=(",", ":"))')
  got=$("$duo" tokenize --ids -m "$fx/$m" -f "$tmp/prompt.txt") || fail "tokenize -m $m"
  [ "$got" = "$want" ] || fail "tokenize $m: $got, HF tokenizers: $want"
done

# logits and perplexity: the directory and the GGUF of one model give the same numbers.
prompt=$(json "$fx/tiny-qwen3.json" 'd["prompt"]')
"$duo" logits --json -k 5 -t 2 -m "$fx/tiny-qwen3" -p "$prompt" > "$tmp/dir.json"
"$duo" logits --json -k 5 -t 2 -m "$fx/tiny-qwen3.gguf" -p "$prompt" > "$tmp/gguf.json"
python3 - "$tmp/dir.json" "$tmp/gguf.json" "$fx/tiny-qwen3.json" <<'PY' || fail "logits: directory vs GGUF"
import json, sys
a, b, ref = (json.load(open(p)) for p in sys.argv[1:])
assert a["prompt_ids"] == b["prompt_ids"] == ref["ids"], (a["prompt_ids"], b["prompt_ids"], ref["ids"])
# Same weights (f16 matrices, norms exact in f32) through the same kernels: equal, not close.
assert [t["id"] for t in a["top"]] == [t["id"] for t in b["top"]], (a["top"], b["top"])
for x, y in zip(a["top"], b["top"]):
    assert x["logit"] == y["logit"] and x["logprob"] == y["logprob"], (x, y)
# And transformers' float32 logit of that token (rounded to 1e-5; hf_arch_test's tolerance).
top = a["top"][0]
assert abs(top["logit"] - ref["logits"][-1][top["id"]]) < 2e-4, (top, ref["logits"][-1][top["id"]])
assert top["id"] == ref["greedy"][0], (top, ref["greedy"])
PY
"$duo" eval ppl -t 2 -m "$fx/tiny-qwen3" --length 100 --json "$tmp/ppl_dir.json" > /dev/null 2>&1
"$duo" eval ppl -t 2 -m "$fx/tiny-qwen3.gguf" --length 100 --json "$tmp/ppl_gguf.json" > /dev/null 2>&1
python3 - "$tmp/ppl_dir.json" "$tmp/ppl_gguf.json" <<'PY' || fail "eval ppl: directory vs GGUF"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["scored"] == b["scored"] == 99, (a, b)
assert a["nll"] == b["nll"] and a["tail_nll"] == b["tail_nll"], (a, b)
PY

m="$fx/tiny-llama-4194k"
# calibrate: a few gate-optimization steps on passkey samples; one gate per layer and KV head.
"$duo" calibrate -m "$m" -t 2 --steps 3 --min-len 300 --max-len 400 --length-intervals 2 --passkeys 1 \
  --passkey-words 2 --sink 4 --recent 16 -o "$tmp/cal.tsv" > "$tmp/cal.txt" 2>&1 || { cat "$tmp/cal.txt"; fail "calibrate"; }
awk -F'\t' 'NF != 2 { exit 1 } { for (i = 1; i <= NF; ++i) if ($i < 0 || $i > 1) exit 1 } END { exit NR != 2 }' \
  "$tmp/cal.tsv" || { cat "$tmp/cal.tsv"; fail "calibrate: not a 2 x 2 gate matrix in [0, 1]"; }
"$duo" pattern rank -m "$m" -t 2 --lengths 400 -o "$tmp/rank.tsv" > /dev/null 2>&1 || fail "pattern rank"
[ "$(wc -l < "$tmp/rank.tsv")" -eq 2 ] || fail "pattern rank: not 2 layers"

# duo attention with a pattern, over each KV type KIVI adds: the run reports duo attention and
# KV kept for streaming heads.
for kv in f32 q8 q4; do
  "$duo" generate -m "$m" -t 2 -n 4 -p "Hello world" --attention duo --pattern "$tmp/rank.tsv" \
    --retrieval-ratio 0.5 --sink 4 --recent 16 --kv-type "$kv" > "$tmp/gen.txt" 2>&1 || { cat "$tmp/gen.txt"; fail "generate duo $kv"; }
  grep -q "4 generated.*attention duo | KV .*streaming" "$tmp/gen.txt" || { cat "$tmp/gen.txt"; fail "generate duo $kv: no summary"; }
done
"$duo" generate -m "$m" -t 2 -n 4 --chat -p "Hello" > "$tmp/chat.txt" 2>&1 || { cat "$tmp/chat.txt"; fail "generate --chat"; }
"$duo" eval niah -m "$m" -t 2 --lengths 400 --depths 0.5 --attention duo --pattern "$tmp/rank.tsv" \
  --retrieval-ratio 0.5 --sink 4 --recent 16 --kv-type q8 -o "$tmp/niah" > "$tmp/niah.txt" 2>&1 ||
  { cat "$tmp/niah.txt"; fail "eval niah"; }
grep -q "accuracy .*duo attention" "$tmp/niah.txt" || { cat "$tmp/niah.txt"; fail "eval niah: no accuracy line"; }
"$duo" eval ruler -m "$m" -t 2 --tasks niah_single_1 --lengths 400 --samples 1 --modes full,duo50+q4 \
  --pattern "$tmp/rank.tsv" --sink 4 --recent 16 -o "$tmp/ruler" > "$tmp/ruler.txt" 2>&1 ||
  { cat "$tmp/ruler.txt"; fail "eval ruler"; }
[ "$(wc -l < "$tmp/ruler.csv")" -eq 3 ] || { cat "$tmp/ruler.txt"; fail "eval ruler: not one row per mode"; }
"$duo" bench -m "$m" -t 2 -p 128 -n 4 --kv-type q4 > "$tmp/bench.txt" 2>&1 || { cat "$tmp/bench.txt"; fail "bench"; }
grep -qE '^ +128 ' "$tmp/bench.txt" || { cat "$tmp/bench.txt"; fail "bench: no 128-token row"; }
printf 'Hello\n/stats\n' | timeout 60 "$duo" chat -m "$m" -t 2 -n 4 > "$tmp/chatpipe.txt" 2>&1 ||
  { cat "$tmp/chatpipe.txt"; fail "chat in a pipe"; }
grep -q "duo chat: tiny-llama-4194k" "$tmp/chatpipe.txt" || { cat "$tmp/chatpipe.txt"; fail "chat: no banner"; }
echo "hf directory cli tests passed"
