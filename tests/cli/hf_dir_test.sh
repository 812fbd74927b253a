#!/usr/bin/env bash
# ctest cli_hf_dir: every model command on Hugging Face directories (the tiny fixtures of
# tests/fixtures/hf, no fetched model needed), checked against independent numbers where there
# are some:
#  - `duo tokenize`: the ids HF tokenizers gave for each fixture's prompt;
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

echo "hf directory cli tests passed"
