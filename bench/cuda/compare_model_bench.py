#!/usr/bin/env python3
"""Prints ours (duo bench --device cuda --out) against the PyTorch baseline
(torch_model_baseline.py --json), measured on the same machine in one call:
  - per mode and length: our latency, PyTorch full attention's, and PyTorch / ours (> 1: we are faster);
  - our modes against our full attention (duo / full, streaming / full), from our own run;
  - the issue's targets that the numbers decide, with PASS / FAIL / n/a."""
import json
import sys


def by(rows, key):
    return {r[key]: r for r in rows}


def main(ours_path, torch_path):
    ours, ref = json.load(open(ours_path)), json.load(open(torch_path))
    mach = ours["machine"]
    print(f"machine: {mach['gpu']} ({mach['sm_count']} SMs), driver {mach['driver_version']}; "
          f"PyTorch {ref.get('torch')} on {ref.get('gpu')}")
    print(f"model: {ours['model']['name']}, our pre-fill chunk {ours['options']['chunk']}, "
          f"PyTorch pre-fill chunk {ref.get('chunk') or 'whole prompt'}; duo gates: {ours['options']['gates']}\n")

    t_pre = by([r for r in ref.get("prefill", []) if "ms" in r], "tokens")
    t_dec = by([r for r in ref.get("decode", []) if "skipped" not in r], "context")
    full_pre = by([r for r in ours["prefill"] if r["mode"] == "full" and "ms" in r], "tokens")
    full_dec = by([r for r in ours["decode"] if r["mode"] == "full" and "ms_per_token" in r], "context")

    print(f"{'pre-fill':<10} {'tokens':>8} {'ours ms':>10} {'torch ms':>10} {'torch/ours':>10} {'vs our full':>11}")
    for r in ours["prefill"]:
        L = r["tokens"]
        if "ms" not in r:
            print(f"{r['mode']:<10} {L:>8}   ours skipped: {r['skipped']}")
            continue
        t = t_pre.get(L)
        tr = f"{t['ms']:10.1f} {t['ms'] / r['ms']:9.2f}x" if t else f"{'-':>10} {'-':>10}"
        fr = f"{full_pre[L]['ms'] / r['ms']:10.2f}x" if L in full_pre else f"{'-':>11}"
        print(f"{r['mode']:<10} {L:>8} {r['ms']:10.1f} {tr} {fr}")

    print(f"\n{'decode':<10} {'context':>8} {'ours ms/t':>10} {'torch ms/t':>10} {'torch/ours':>10} {'vs our full':>11}"
          f" {'KV vs full':>10} {'~non-attn':>9}  (torch: CUDA graph when it captured, else eager;"
          f" ~non-attn = our ms/token - our attention time)")
    for r in ours["decode"]:
        C = r["context"]
        if "ms_per_token" not in r:
            print(f"{r['mode']:<10} {C:>8}   ours skipped: {r['skipped']}  (KV {r['kv_reduction_vs_full']:.2f}x smaller than full)")
            continue
        t = t_dec.get(C)
        tm = (t.get("ms_per_token_graph") or t.get("ms_per_token_eager")) if t else None
        measured = r.get("measured_context")
        if measured:  # ours ran a shorter context: not comparable with PyTorch at C
            tm = None
        tr = f"{tm:10.3f} {tm / r['ms_per_token']:9.2f}x" if tm else f"{'-':>10} {'-':>10}"
        lower = C in full_dec and "measured_context" in full_dec[C] and r["mode"] != "full"
        fr = (f"{'>=' if lower else ''}{full_dec[C]['ms_per_token'] / r['ms_per_token']:.2f}x".rjust(11)
              if C in full_dec else f"{'-':>11}")
        note = f"  (measured at {measured}: {C} does not fit)" if measured else ""
        rest = r['ms_per_token'] - r.get('attn_us', 0.0) / 1e3
        print(f"{r['mode']:<10} {C:>8} {r['ms_per_token']:10.3f} {tr} {fr} {r['kv_reduction_vs_full']:9.2f}x"
              f" {rest:9.3f}{note}")

    # The targets that this run can decide.
    shape = ours["model"]["shape"]
    print("\ntargets:")

    def verdict(ok):
        return "n/a (not measured)" if ok is None else ("PASS" if ok else "FAIL")

    def ratio(rows, mode, key, L, field):
        for r in rows:
            if r["mode"] == mode and r[key] == L and field in r:
                return r[field]
        return None

    copy = ref.get("copy_gbs")
    for r in ours["decode"]:
        if r["mode"] == "full" and r["context"] >= 131072 and "attn_gbs" in r:
            extra = f" = {100 * r['attn_gbs'] / copy:.0f}% of PyTorch-measured copy" if copy else ""
            ctx = r.get("measured_context", r["context"])
            print(f"  decode attention at {ctx}: {r['attn_gbs']:.0f} GB/s{extra} (target >= 85% of ~3.0 TB/s)")
    if shape == "llama3-8b":
        d = ratio(ours["decode"], "duo50", "context", 262144, "speedup_vs_full")
        p = ratio(ours["prefill"], "duo50", "tokens", 131072, "speedup_vs_full")
        print(f"  llama3-8b duo50 decode at 256K >= 1.5x our full: {'' if d is None else f'{d:.2f}x '}{verdict(None if d is None else d >= 1.5)}")
        print(f"  llama3-8b duo50 pre-fill at 128K >= 1.5x our full: {'' if p is None else f'{p:.2f}x '}{verdict(None if p is None else p >= 1.5)}")
        dm = ratio(ours["decode"], "duo50", "context", 262144, "ms_per_token")
        tm = t_dec.get(262144)
        tms = (tm.get("ms_per_token_graph") or tm.get("ms_per_token_eager")) if tm else None
        print(f"  llama3-8b duo50 decode at 256K faster than PyTorch full: "
              f"{verdict(None if dm is None or tms is None else dm < tms)}")
        pm = ratio(ours["prefill"], "duo50", "tokens", 131072, "ms")
        tp = t_pre.get(131072)
        print(f"  llama3-8b duo50 pre-fill at 128K faster than PyTorch full: "
              f"{verdict(None if pm is None or tp is None else pm < tp['ms'])}")
    if shape == "llama2-7b":
        kv = ratio(ours["decode"], "duo25", "context", 131072, "kv_reduction_vs_full")
        d = ratio(ours["decode"], "duo25", "context", 131072, "speedup_vs_full")
        print(f"  llama2-7b duo25 KV >= 2.5x smaller than full: {kv and f'{kv:.2f}x'} {verdict(None if kv is None else kv >= 2.5)}")
        lb = ratio(ours["decode"], "duo25", "context", 131072, "speedup_vs_full_is_lower_bound")
        if lb and d is not None:
            at = ratio(ours["decode"], "duo25", "context", 131072, "full_measured_context")
            print(f"  llama2-7b duo25 decode at 128K >= 2x our full: >= {d:.2f}x (full's KV at 128K does not fit "
                  f"next to the weights; full measured at {at} tokens, which is faster than full at 128K, so this "
                  f"is a lower bound) {'PASS' if d >= 2.0 else 'not decided (lower bound below 2x)'}")
        else:
            print(f"  llama2-7b duo25 decode at 128K >= 2x our full: {d and f'{d:.2f}x'} {verdict(None if d is None else d >= 2.0)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: compare_model_bench.py OURS.json TORCH.json")
    main(sys.argv[1], sys.argv[2])
