#!/usr/bin/env bash
# Runs `duo bench --device cuda` on a synthetic full-size shape and the PyTorch SDPA baseline on
# the same shape in one call (one after the other: each gets the whole GPU), then prints
# ours / PyTorch and duo / full ratios and the issue's targets.
#
#   bench/cuda/run_model_bench.sh [build dir (default build-gpu)] [shape (default llama3-8b)] [extra duo bench args]
#
# Environment: PREFILL, DECODE (comma-separated lengths; set and empty: none), CHUNK (our pre-fill chunk, default
# 8192), TORCH_CHUNK (PyTorch's, default 0 = whole prompt in one flash-attention pass), MODES,
# STEPS (timed decode steps), OUT (directory for the JSON files, default a temporary one).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-build-gpu}"
shape="${2:-llama3-8b}"
shift $(( $# > 2 ? 2 : $# ))
PREFILL="${PREFILL-8192,32768,131072}"
DECODE="${DECODE-32768,131072,262144,524288,1048576}"
CHUNK="${CHUNK:-8192}"
TORCH_CHUNK="${TORCH_CHUNK:-0}"
MODES="${MODES:-full,duo25,duo50,streaming}"
STEPS="${STEPS:-32}"
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
"$build/duo" bench --device cuda --synthetic "$shape" --modes "$MODES" --prefill "$PREFILL" --decode "$DECODE" \
  --chunk "$CHUNK" --decode-steps "$STEPS" --out "$out/ours-$shape.json" "$@"
echo
python3 "$here/torch_model_baseline.py" --shape "$shape" --prefill "$PREFILL" --decode "$DECODE" \
  --chunk "$TORCH_CHUNK" --decode-steps "$STEPS" --json "$out/torch-$shape.json"
echo
python3 "$here/compare_model_bench.py" "$out/ours-$shape.json" "$out/torch-$shape.json"
echo "(JSON in $out)"
