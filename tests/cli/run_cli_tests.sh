#!/usr/bin/env bash
# ctest cli_smoke: CLI paths that no unit test reaches, run on the real SmolLM2.
#  - `duo bench --compare-modes` with --pattern: full, duo and streaming rows, duo's KV between
#    streaming's and full's (the duo row once failed option parsing after the full rows had run);
#  - `duo eval ppl --json`: the perplexity measured for the tokens asked;
#  - `duo eval ruler` with two modes on one engine (full and a duoNN plan): reports and summaries;
#  - `duo info` on Hugging Face directories (fixtures, no model needed);
#  - bad input gives a clear error and a non-zero exit, not a crash, a hang or a thread storm
#    (these run first, without the model).
# Exit status 77 (ctest: skipped) when the model is missing, unless DUO_REQUIRE_MODELS is set.
set -euo pipefail
duo=${1:?usage: run_cli_tests.sh path/to/duo}
root="$(cd "$(dirname "$0")/../.." && pwd)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# refused "WHAT" "EXPECTED MESSAGE" duo-args...: a non-zero exit within 20 s (not a signal, not
# the timeout) whose output holds the message.
refused() {
  local what=$1 msg=$2 rc=0
  shift 2
  timeout 20 "$duo" "$@" > "$tmp/refused.txt" 2>&1 < /dev/null || rc=$?
  [ "$rc" -ne 0 ] || fail "$what: accepted"
  [ "$rc" -lt 124 ] || { head -c 2000 "$tmp/refused.txt"; fail "$what: exit status $rc (hang, crash or abort)"; }
  grep -qF -- "$msg" "$tmp/refused.txt" || { head -c 2000 "$tmp/refused.txt"; fail "$what: unclear error"; }
}
# Caps at start (max_batch + max_queue + 16 HTTP threads once aborted the server; sink + recent
# overflowed int in the KV cache; NaN passed the range checks and was silently ignored).
refused "serve --max-queue 100000" "--max-queue: Value 100000 not in range 0 to 1024" serve --max-queue 100000 --port 0
refused "serve --max-batch 100000" "--max-batch: Value 100000 not in range 1 to 1024" serve --max-batch 100000 --port 0
refused "serve --kv-budget nan" "--kv-budget: must be a finite number" serve --kv-budget nan --port 0
refused "--sink 2^31-1" "--sink: Value 2147483647 not in range 0 to 16777216" generate --sink 2147483647 -p hi
refused "--recent 2^31-1" "--recent: Value 2147483647 not in range 1 to 16777216" generate --recent 2147483647 -p hi
refused "--retrieval-ratio nan" "--retrieval-ratio: must be a finite number" generate --retrieval-ratio nan -p hi
# -m naming a FIFO: refused at once, not a wait for a writer that never comes.
mkfifo "$tmp/fifo.gguf"
refused "-m FIFO" "is not a regular file" info -m "$tmp/fifo.gguf"
refused "generate -m FIFO" "is not a regular file" generate -m "$tmp/fifo.gguf" -p hi
# An exception of a type main does not name (std::filesystem_error here) is still a clear
# error and exit 1, not std::terminate.
refused "-m with a too-long file name" "duo: error:" generate -m "/tmp/$(printf 'x%.0s' $(seq 300))" -p hi
grep -q "terminate" "$tmp/refused.txt" && fail "too-long file name: terminate"

# `duo info` on a Hugging Face directory: the summary a GGUF gets (the same config lines for
# tiny-qwen3's directory and its GGUF), the safetensors dtypes, the tokenizer.
fx="$root/tests/fixtures/hf"
"$duo" info -m "$fx/tiny-qwen3" > "$tmp/info_dir.txt" || fail "info on a directory"
"$duo" info -m "$fx/tiny-qwen3.gguf" > "$tmp/info_gguf.txt" || fail "info on the qwen3 GGUF"
for want in "architecture  qwen3" "heads         4 query, 2 kv (group 2), head dim 16" "context       256" \
            "q/k norm      yes" "hf checkpoint 1 safetensors file" "tokenizer     BPE / pre-tokenizer Sequence"; do
  grep -qF -- "$want" "$tmp/info_dir.txt" || { cat "$tmp/info_dir.txt"; fail "info on a directory: no '$want'"; }
done
grep -qE '^  F16 +[0-9]+ tensors' "$tmp/info_dir.txt" || { cat "$tmp/info_dir.txt"; fail "info: no F16 tensors line"; }
same() { grep -E '^(architecture|layers|embedding|ffn|heads|vocab|context|rope|norm eps|qkv bias|q/k norm|tied)' "$1"; }
diff <(same "$tmp/info_dir.txt") <(same "$tmp/info_gguf.txt") || fail "info: directory and GGUF of one model differ"
"$duo" info -m "$fx/tiny-mistral" > "$tmp/info_mistral.txt" || fail "info on tiny-mistral"
grep -qF "sliding win   48" "$tmp/info_mistral.txt" || { cat "$tmp/info_mistral.txt"; fail "info: no sliding window"; }

model=${DUO_MODELS:-$HOME/.cache/duo/models}/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  [ -n "${DUO_REQUIRE_MODELS:-}" ] && { echo "model missing: $model"; exit 1; }
  echo "model not fetched: $model"; exit 77
fi

"$duo" bench -m "$model" -t 2 --compare-modes 512 -n 2 --duo-ratio 0.5 \
  --pattern "$root/patterns/SmolLM2-135M-Instruct/cpu_48steps.tsv" > "$tmp/modes.txt"
cat "$tmp/modes.txt"
kv() { awk -v m="$1" '$1 == m && $2 == 512 { print $4 }' "$tmp/modes.txt"; }
kv_full=$(kv full) kv_duo=$(kv duo) kv_stream=$(kv streaming)
[ -n "$kv_full" ] && [ -n "$kv_duo" ] && [ -n "$kv_stream" ] || fail "compare-modes: missing a row"
awk -v f="$kv_full" -v d="$kv_duo" -v s="$kv_stream" 'BEGIN { exit !(s < d && d < f) }' ||
  fail "compare-modes: KV MiB not streaming < duo < full ($kv_stream, $kv_duo, $kv_full)"

"$duo" eval ppl -m "$model" -t 2 --length 96 --score-chunk 32 --json "$tmp/ppl.json" > "$tmp/ppl.txt" 2>&1
python3 - "$tmp/ppl.json" <<'PY' || fail "eval ppl: bad JSON result"
import json, math, sys
r = json.load(open(sys.argv[1]))
assert r["scored"] == 95 and r["tail_from"] == 48 and r["tail_scored"] == 48, r
# Measured: nll 4.795976 (ppl 121.02) with the AVX-512 kernels, 4.796015 with AVX2 (DUO_SIMD=avx2),
# tail nll 4.404697 / 4.404757. A margin of 0.005 nats (0.5% of ppl) is 100x that spread; a
# wrong token, position or log-softmax moves the nll by far more.
assert abs(r["nll"] - 4.79598) < 0.005, r
assert abs(r["tail_nll"] - 4.40470) < 0.005, r
assert abs(math.log(r["ppl"]) - r["nll"]) < 1e-4, r
PY

refused "eval ruler --tasks bogus" "unknown RULER task 'bogus'" eval ruler -m "$model" --tasks bogus
refused "eval ruler duo without pattern" "duo modes need --pattern" eval ruler -m "$model" --modes full,duo25
refused "eval ruler full with a pattern" "only duo modes take a pattern" eval ruler -m "$model" --modes full@x.tsv
refused "eval ruler bad KV suffix" "q5" eval ruler -m "$model" --modes duo50+q5 --pattern x.tsv
# A mode with its own pattern file and KV type (duoNN@FILE+KV) beside the --pattern ones.
"$duo" eval ruler -m "$model" -t 2 --tasks niah_single_1 --lengths 200 --samples 1 \
  --modes "full,duo50,duo50@$root/patterns/SmolLM2-135M-Instruct/cpu_48steps.tsv+q8" --sink 16 --recent 32 \
  --pattern "$root/patterns/SmolLM2-135M-Instruct/cpu_48steps.tsv" -o "$tmp/ruler" > "$tmp/ruler.txt" 2>&1 ||
  { cat "$tmp/ruler.txt"; fail "eval ruler failed"; }
grep -q "^ruler dev full: average" "$tmp/ruler.txt" && grep -q "^ruler dev duo50: average" "$tmp/ruler.txt" ||
  { cat "$tmp/ruler.txt"; fail "eval ruler: no summary line per mode"; }
[ "$(wc -l < "$tmp/ruler.csv")" -eq 4 ] && grep -q "<svg" "$tmp/ruler.svg" || fail "eval ruler: bad CSV or SVG"
python3 - "$tmp/ruler.json" <<'PY' || fail "eval ruler: bad JSON result"
import json, sys
r = json.load(open(sys.argv[1]))
full, duo, duo_q8 = r["samples"]
assert (full["mode"], duo["mode"], duo_q8["mode"]) == ("full", "duo50", "duo50@cpu_48steps+q8"), r["samples"]
assert full["expected"] == duo["expected"] == duo_q8["expected"] and full["prompt_tokens"] == 200
assert duo_q8["kv_bytes"] < duo["kv_bytes"] < full["kv_bytes"], (duo_q8["kv_bytes"], duo["kv_bytes"], full["kv_bytes"])
for m in ("full", "duo50", "duo50@cpu_48steps+q8"):
    s = [x for x in r["samples"] if x["mode"] == m][0]
    assert r["summary"][m]["average"] == 100.0 * s["score"], r["summary"]
PY

if "$duo" eval ppl -m "$model" --length 1000000 > "$tmp/err.txt" 2>&1; then fail "eval ppl accepted 1M tokens"; fi
grep -q "longer than the context limit" "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "eval ppl: unclear error"; }
echo "cli smoke tests passed"
