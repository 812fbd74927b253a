#!/usr/bin/env python3
"""PyTorch SDPA baseline on the shapes of duo_cuda_bench (Llama-3-8B attention: 32 q heads,
8 KV heads, d=128, bf16): causal pre-fill at 8K/32K and decode (one query) at 32K/128K/512K.
Prints a table and, with --json FILE, the numbers as JSON (same keys as duo_cuda_bench)."""
import argparse
import json

import torch
import torch.nn.functional as F

H, KV, D = 32, 8, 128


def time_ms(fn, iters, rounds=5):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / iters)
    times.sort()
    return times[len(times) // 2]


def sdpa(q, k, v, causal):
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    except (TypeError, RuntimeError):
        g = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=causal)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    dev = "cuda"
    print(f"PyTorch {torch.__version__} SDPA on {out['gpu']}")
    x = torch.empty(1 << 29, dtype=torch.float16, device=dev)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), 10)
    out["copy_gbs"] = 2 * x.numel() * 2 / (ms * 1e-3) / 1e9
    print(f"device copy: {out['copy_gbs']:.1f} GB/s (read+write)")
    del x, y
    for L in [8192] if args.quick else [8192, 32768]:
        q = torch.randn(1, H, L, D, dtype=torch.bfloat16, device=dev)
        k = torch.randn(1, KV, L, D, dtype=torch.bfloat16, device=dev)
        v = torch.randn(1, KV, L, D, dtype=torch.bfloat16, device=dev)
        ms = time_ms(lambda: sdpa(q, k, v, True), 3 if L > 16384 else 10)
        tf = 4.0 * L * L / 2 * D * H / (ms * 1e-3) / 1e12
        print(f"  causal L={L:6d}: {ms:9.3f} ms  {tf:7.1f} TFLOP/s")
        out[f"prefill_causal_{L}_ms"], out[f"prefill_causal_{L}_tflops"] = ms, tf
        del q, k, v
    for L in [32768] if args.quick else [32768, 131072, 524288]:
        q = torch.randn(1, H, 1, D, dtype=torch.bfloat16, device=dev)
        k = torch.randn(1, KV, L, D, dtype=torch.bfloat16, device=dev)
        v = torch.randn(1, KV, L, D, dtype=torch.bfloat16, device=dev)
        us = 1e3 * time_ms(lambda: sdpa(q, k, v, False), 20)
        gbs = 2 * 2 * KV * L * D / (us * 1e-6) / 1e9
        print(f"  decode L={L:7d}: {us:9.1f} us  {gbs:7.1f} GB/s")
        out[f"decode_full_{L}_us"], out[f"decode_full_{L}_gbs"] = us, gbs
        del q, k, v
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
