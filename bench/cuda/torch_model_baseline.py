#!/usr/bin/env python3
"""PyTorch baseline for `duo bench --device cuda`: the same decoder shape (llama3-8b, llama2-7b,
qwen2.5-7b) in plain PyTorch with random bf16 weights and SDPA *full* attention.

- pre-fill latency at the given lengths: by default one causal pass over the whole prompt
  (flash attention, the fastest PyTorch path while memory allows), or with --chunk N in chunks
  that attend over the preallocated KV cache plus themselves (causal, bottom-right aligned);
- decode ms/token at the given contexts with a preallocated KV cache (filled with random values,
  as ours is), one new token attending over everything: eager, and replayed as a CUDA graph
  (no Python / launch overhead: the stronger baseline).

No Hugging Face download: the layers are written here (RMSNorm, fused QKV with optional bias,
rotate-half RoPE, SDPA, SwiGLU FFN, LM head). Writes JSON with --json; lengths whose KV cache
does not fit in free memory are skipped with the reason, as ours are.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

SHAPES = {
    # layers, embd, ff, heads, kv heads, vocab, rope theta, qkv bias
    "llama3-8b": dict(layers=32, embd=4096, ff=14336, heads=32, kv=8, vocab=128256, theta=500000.0, bias=False),
    "llama2-7b": dict(layers=32, embd=4096, ff=11008, heads=32, kv=32, vocab=32000, theta=10000.0, bias=False),
    "qwen2.5-7b": dict(layers=28, embd=3584, ff=18944, heads=28, kv=4, vocab=152064, theta=1e6, bias=True),
}
GiB = float(1 << 30)


def rms_norm(x, w, eps=1e-5):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


class Decoder:
    def __init__(self, s, dev, seed):
        torch.manual_seed(seed)
        self.s = s
        E, F_, H, KV = s["embd"], s["ff"], s["heads"], s["kv"]
        self.D = D = E // H
        Q, KVD = H * D, KV * D
        bf = torch.bfloat16

        def mat(rows, cols):  # N(0, 1/cols), generated on the GPU in bf16
            return torch.randn(rows, cols, device=dev, dtype=bf) * (1.0 / math.sqrt(cols))

        self.embed = mat(s["vocab"], E)
        self.out = mat(s["vocab"], E)
        self.out_norm = torch.ones(E, device=dev, dtype=bf)
        self.layers = []
        for _ in range(s["layers"]):
            L = dict(
                attn_norm=torch.ones(E, device=dev, dtype=bf),
                ffn_norm=torch.ones(E, device=dev, dtype=bf),
                wqkv=mat(Q + 2 * KVD, E),
                bqkv=(torch.randn(Q + 2 * KVD, device=dev, dtype=bf) * 0.1) if s["bias"] else None,
                wo=mat(E, Q),
                wgu=mat(2 * F_, E),
                wdown=mat(E, F_),
            )
            self.layers.append(L)
        inv = 1.0 / (s["theta"] ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
        self.inv_freq = inv
        self.dev = dev

    def weight_bytes(self):
        n = self.embed.numel() + self.out.numel()
        for L in self.layers:
            n += sum(t.numel() for t in (L["wqkv"], L["wo"], L["wgu"], L["wdown"]))
        return 2 * n

    def rope(self, x, pos):  # x [n, heads, D], pos [n] (rotate-half pairing)
        ang = pos.float()[:, None] * self.inv_freq[None, :]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        x1, x2 = x[..., : self.D // 2].float(), x[..., self.D // 2 :].float()
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

    def new_cache(self, cap, batch=1):
        s = self.s
        shape = (batch, s["kv"], cap, self.D)
        return [(torch.empty(shape, device=self.dev, dtype=torch.bfloat16),
                 torch.empty(shape, device=self.dev, dtype=torch.bfloat16)) for _ in range(s["layers"])]

    def attend(self, q, K, V, start, n):
        """q [1, H, n, D] over keys [0, start + n) of K/V [1, KV, cap, D]."""
        k, v = K[:, :, : start + n], V[:, :, : start + n]
        if n == 1:
            return sdpa(q, k, v, causal=False)
        if start == 0:
            return sdpa(q, k, v, causal=True)
        return sdpa_lower_right(q, k, v)

    def forward(self, tokens, cache, start):
        """tokens [n] at positions start..; returns the last token's logits."""
        s, D = self.s, self.D
        H, KV = s["heads"], s["kv"]
        n = tokens.shape[0]
        pos = torch.arange(start, start + n, device=self.dev)
        x = self.embed[tokens]
        for L, (K, V) in zip(self.layers, cache):
            h = rms_norm(x, L["attn_norm"])
            qkv = h @ L["wqkv"].t()
            if L["bqkv"] is not None:
                qkv = qkv + L["bqkv"]
            q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
            q = self.rope(q.view(n, H, D), pos)
            k = self.rope(k.view(n, KV, D), pos)
            K[0, :, start : start + n] = k.transpose(0, 1)
            V[0, :, start : start + n] = v.view(n, KV, D).transpose(0, 1)
            a = self.attend(q.transpose(0, 1).unsqueeze(0), K, V, start, n)  # [1, H, n, D]
            x = x + a[0].transpose(0, 1).reshape(n, H * D) @ L["wo"].t()
            h = rms_norm(x, L["ffn_norm"])
            g, u = (h @ L["wgu"].t()).chunk(2, dim=-1)
            x = x + (F.silu(g) * u) @ L["wdown"].t()
        return rms_norm(x[-1:], self.out_norm) @ self.out.t()


    def decode_batch(self, tokens, cache, start):
        """One decode token for each of B sequences, all at position `start` (tokens [B]): the
        batch's linear layers as one GEMM, SDPA over the batch; returns [B, vocab] logits."""
        s, D = self.s, self.D
        H, KV = s["heads"], s["kv"]
        B = tokens.shape[0]
        pos = torch.full((B,), start, device=self.dev)
        x = self.embed[tokens]
        for L, (K, V) in zip(self.layers, cache):
            h = rms_norm(x, L["attn_norm"])
            qkv = h @ L["wqkv"].t()
            if L["bqkv"] is not None:
                qkv = qkv + L["bqkv"]
            q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
            q = self.rope(q.view(B, H, D), pos)
            k = self.rope(k.view(B, KV, D), pos)
            K[:, :, start] = k
            V[:, :, start] = v.view(B, KV, D)
            a = sdpa(q.unsqueeze(2), K[:, :, : start + 1], V[:, :, : start + 1], causal=False)  # [B, H, 1, D]
            x = x + a.reshape(B, H * D) @ L["wo"].t()
            h = rms_norm(x, L["ffn_norm"])
            g, u = (h @ L["wgu"].t()).chunk(2, dim=-1)
            x = x + (F.silu(g) * u) @ L["wdown"].t()
        return rms_norm(x, self.out_norm) @ self.out.t()


def sdpa(q, k, v, causal):
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    except (TypeError, RuntimeError):
        g = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=causal)


def sdpa_lower_right(q, k, v):
    """Causal attention of the last q.shape[2] positions over all of k/v (chunked pre-fill)."""
    n, L = q.shape[2], k.shape[2]
    g = q.shape[1] // k.shape[1]
    try:
        from torch.nn.attention.bias import causal_lower_right

        bias = causal_lower_right(n, L)
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
        except (TypeError, RuntimeError, ValueError):
            return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=bias)
    except ImportError:
        mask = torch.ones(n, L, dtype=torch.bool, device=q.device).tril(diagonal=L - n)
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)


def free_bytes():
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


def kv_bytes(s, D, tokens):
    return 2 * 2 * s["layers"] * s["kv"] * D * tokens


def bench_prefill(m, L, chunk, seed):
    s = m.s
    chunk = chunk if chunk > 0 else L  # 0: one causal pass over the whole prompt (flash attention)
    # Peak activations a token: gate|up (4F bytes) + silu(g) and its product (4F), fp32 RoPE
    # temporaries of q (~12 Q), residual / norm / attention rows (~8 E).
    need = kv_bytes(s, m.D, L) + chunk * (8 * s["ff"] + 12 * s["heads"] * m.D + 8 * s["embd"]) + 2 * GiB
    if need > free_bytes():
        return {"tokens": L, "skipped": f"needs {need / GiB:.1f} GiB, {free_bytes() / GiB:.1f} GiB free"}
    g = torch.Generator(device=m.dev).manual_seed(seed + L)
    toks = torch.randint(0, s["vocab"], (L,), device=m.dev, generator=g)
    cache = m.new_cache(L)
    with torch.inference_mode():
        m.forward(toks[: min(L, chunk)], cache, 0)  # warm-up (kernels, cuBLAS heuristics)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for b in range(0, L, chunk):
            logits = m.forward(toks[b : b + chunk], cache, b)
        logits.argmax().item()
        torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated()
    del cache
    return {"tokens": L, "chunk": chunk, "ms": ms, "peak_bytes": peak}


def bench_decode(m, C, steps, seed, batch=1):
    s = m.s
    need = batch * kv_bytes(s, m.D, C + 1) + 1 * GiB  # decode temporaries are small
    if need > free_bytes():
        return {"context": C, "batch": batch,
                "skipped": f"needs {need / GiB:.1f} GiB, {free_bytes() / GiB:.1f} GiB free"}
    cache = m.new_cache(C + 1, batch)
    g = torch.Generator(device=m.dev).manual_seed(seed)
    for K, V in cache:  # random keys/values for [0, C), in place (no big temporaries)
        K.normal_(generator=g)
        V.normal_(generator=g)
    tok = torch.ones(batch, dtype=torch.long, device=m.dev)
    out = {"context": C, "batch": batch}
    with torch.inference_mode():
        # Every step decodes position C (overwriting its K/V): the same work as a step at C.
        def step():
            if batch > 1:
                return m.decode_batch(tok, cache, C).argmax(dim=-1)
            return m.forward(tok, cache, C).argmax(dim=-1)

        for _ in range(2):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = step()
            nxt.tolist()  # a generation loop needs the tokens on the host
        out["ms_per_token_eager"] = 1e3 * (time.perf_counter() - t0) / steps
        try:
            graph = torch.cuda.CUDAGraph()
            s_ = torch.cuda.Stream()
            s_.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s_):
                step()
            torch.cuda.current_stream().wait_stream(s_)
            with torch.cuda.graph(graph):
                static_next = step()
            graph.replay()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                graph.replay()
                static_next.tolist()
            out["ms_per_token_graph"] = 1e3 * (time.perf_counter() - t0) / steps
            del graph
        except Exception as e:  # noqa: BLE001 - report why the graph variant is missing
            out["graph_error"] = f"{type(e).__name__}: {e}"
    del cache
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--prefill", default="8192,32768,131072")
    ap.add_argument("--decode", default="32768,131072,262144,524288,1048576")
    ap.add_argument("--chunk", type=int, default=0, help="pre-fill chunk (0: whole prompt in one pass)")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1, help="decode this many sequences together (all at one context)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    lengths = lambda t: [int(x) for x in t.split(",") if x.strip() and int(x) > 0]  # noqa: E731
    dev = "cuda"
    s = SHAPES[a.shape]
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": a.shape, "chunk": a.chunk}
    print(f"PyTorch {torch.__version__} on {out['gpu']}: {a.shape} with random bf16 weights, SDPA full attention")
    # Device copy bandwidth (read + write) in the same call: the yardstick of decode attention.
    x = torch.empty(1 << 29, dtype=torch.float16, device=dev)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    for _ in range(10):
        y.copy_(x)
    ev1.record()
    ev1.synchronize()
    out["copy_gbs"] = 10 * 2 * x.numel() * 2 / (ev0.elapsed_time(ev1) * 1e-3) / 1e9
    print(f"  device copy: {out['copy_gbs']:.0f} GB/s (read + write)")
    del x, y
    m = Decoder(s, dev, a.seed)
    out["weights_bytes"] = m.weight_bytes()
    out["prefill"] = []
    for L in lengths(a.prefill):
        r = bench_prefill(m, L, a.chunk, a.seed)
        out["prefill"].append(r)
        print(f"  pre-fill {L:8d}: " + (f"{r['ms']:10.1f} ms" if "ms" in r else "skipped: " + r["skipped"]), flush=True)
    out["decode"] = []
    for C in lengths(a.decode):
        r = bench_decode(m, C, a.decode_steps, a.seed, a.batch)
        out["decode"].append(r)
        if "skipped" in r:
            print(f"  decode {C:8d}: skipped: {r['skipped']}", flush=True)
        else:
            gr = r.get("ms_per_token_graph")
            print(f"  decode {C:8d} x {a.batch}: {r['ms_per_token_eager']:8.3f} ms/step eager, "
                  + (f"{gr:8.3f} ms/step CUDA graph" if gr else "graph failed: " + r.get("graph_error", "?")), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
