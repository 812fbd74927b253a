#!/usr/bin/env bash
# Runs duo_cuda_bench and the PyTorch SDPA baseline on the same shapes, then prints ours/PyTorch.
# Usage: bench/cuda/run_attention_bench.sh [build dir (default build-gpu)] [--quick]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-build-gpu}"
shift || true
tmp="$(mktemp -d)"
"$build/duo_cuda_bench" --json "$tmp/ours.json" "$@"
echo
python3 "$here/torch_sdpa.py" --json "$tmp/torch.json" "$@"
echo
python3 - "$tmp/ours.json" "$tmp/torch.json" <<'PY'
import json, sys
ours, ref = (json.load(open(p)) for p in sys.argv[1:3])
print("ours / PyTorch SDPA (higher is better for us)")
for k in sorted(ours, key=lambda s: (len(s), s)):
    if k.startswith("prefill_causal") and k.endswith("_tflops") and k in ref:
        L = k[len("prefill_causal_"):-len("_tflops")]
        for kern in ("mma", "wgmma", "wgmma_serial"):
            kk = f"prefill_causal_{L}_{kern}_tflops"
            if kk in ours:
                print(f"  {'prefill_causal_' + L + ' ' + kern:28s} {ours[kk]:7.1f} vs {ref[k]:7.1f} TFLOP/s  ratio {ours[kk] / ref[k]:.2f}x")
for k in sorted(ours):
    if k.endswith("_maxdiff_vs_mma"):
        print(f"  {k:44s} {ours[k]:.3g}{'  MISMATCH' if ours[k] > 2e-2 else ''}")
for k in sorted(ours, key=lambda s: (len(s), s)):
    if k.startswith("decode_full") and k.endswith("_us") and k in ref:
        g = k[:-3] + "_gbs"
        print(f"  {k[:-3]:28s} {ours[k]:9.1f} vs {ref[k]:9.1f} us  ({ours[g]:.0f} vs {ref[g]:.0f} GB/s)  speedup {ref[k] / ours[k]:.2f}x"
              f"  ours = {100 * ours[g] / ours['copy_gbs']:.0f}% of copy bandwidth")
PY
