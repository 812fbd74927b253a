#!/usr/bin/env python3
"""Tiny random-weight models (GGUF) and HF transformers' logits for them, an implementation
independent of ours, for tests/model/tiny_reference_test.cpp:

  tiny-llama    SmolLM2-like: llama, GQA 4/2, tied embeddings (GGUF Q/K rows permuted for
                interleaved RoPE, as llama.cpp's converter stores them)
  tiny-qwen2    Qwen2-like: QKV biases, untied output, NeoX RoPE
  tiny-llama31  llama with Llama-3.1 RoPE scaling (rope_type llama3): the GGUF carries the
                per-frequency factors as rope_freqs.weight, HF applies its own llama3 rope

For tiny-llama and tiny-qwen2 the logits are recorded three ways: full causal attention;
every head streaming (attention sinks + recent window); and a duo pattern (some KV heads
streaming). Streaming masks are 4-D, one per query head, built here from the definition
(key j visible to query i iff j <= i and (j < sink or j > i - recent)); a query head follows
the plan of its KV head. They go through transformers' own eager attention by a registered
attention function that swaps in the layer's mask (one model call has one mask for all layers).

Weights are rounded to float16 (the GGUF stores matrices as F16, norms as F32), so both sides
compute with the same values. The script loads every GGUF it writes back through transformers'
GGUF reader (except tiny-llama31, whose scaling that reader does not take) and checks the
logits, which checks the layout written here against transformers' own reading of it.

Run: python -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers gguf numpy
     HF_HUB_OFFLINE=1 /tmp/refenv/bin/python dev/make_tiny_model_fixtures.py
"""
import json
import math
import os
import tempfile

import gguf
import numpy as np
import torch
import transformers
from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import eager_attention_forward

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny_models")
N_TOKENS = 40
SINK, RECENT = 4, 8
# [layer][kv head]: 1 = streaming. Layer 0 mixes, layer 1 streams its second head only.
DUO_PATTERN = [[1, 0], [0, 1]]

SHAPE = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5)


def randomize(model, seed):
    """Weights large enough that attention is peaked (so masks matter), rounded to float16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # biases
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[1]
                scale = 2.5 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            p.copy_(p.half().float())


def streaming_mask(n_heads, n_kv, kinds, t):
    """Additive 4-D mask [1, n_heads, t, t]: 0 where visible, -inf elsewhere."""
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    causal = j <= i
    stream = causal & ((j < SINK) | (j > i - RECENT))
    group = n_heads // n_kv
    m = torch.full((1, n_heads, t, t), float("-inf"))
    for h in range(n_heads):
        vis = stream if kinds[h // group] else causal
        m[0, h][vis] = 0.0
    return m


# The masks of the current call, one per layer (full attention too: the mask transformers
# builds for a registered attention function is not the eager one).
LAYER_MASKS = None


def masked_eager(module, query, key, value, attention_mask, **kwargs):
    return eager_attention_forward(module, query, key, value, LAYER_MASKS[module.layer_idx], **kwargs)


AttentionInterface.register("tiny_masked_eager", masked_eager)


def logits_with(model, ids, kinds_per_layer):
    global LAYER_MASKS
    cfg = model.config
    if kinds_per_layer is None:  # full attention: every head retrieval (causal)
        kinds_per_layer = [[0] * cfg.num_key_value_heads for _ in range(cfg.num_hidden_layers)]
    LAYER_MASKS = [streaming_mask(cfg.num_attention_heads, cfg.num_key_value_heads, k, len(ids))
                   for k in kinds_per_layer]
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].double()
    finally:
        LAYER_MASKS = None


def interleave_rows(w, n_head):
    """HF's rotate-half row order of each head -> llama.cpp's interleaved pairs: row r of the
    first half goes to 2r, row r of the second half to 2r + 1."""
    d = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        blk = w[h * d:(h + 1) * d]
        out[h * d:(h + 1) * d][0::2] = blk[:d // 2]
        out[h * d:(h + 1) * d][1::2] = blk[d // 2:]
    return out


def write_gguf(model, arch, path, rope_theta, rope_factors=None):
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(path, arch)
    w.add_name(os.path.basename(path))
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)  # transformers reads it here when the file has no tokenizer

    def mat(name, a):
        w.add_tensor(name, a.astype(np.float16))

    def vec(name, a):
        w.add_tensor(name, a.astype(np.float32))

    mat("token_embd.weight", sd["model.embed_tokens.weight"])
    vec("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        mat("output.weight", sd["lm_head.weight"])
    if rope_factors is not None:
        vec("rope_freqs.weight", rope_factors)
    for l in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q = interleave_rows(q, cfg.num_attention_heads)
            k = interleave_rows(k, cfg.num_key_value_heads)
        mat(b + "attn_q.weight", q)
        mat(b + "attn_k.weight", k)
        mat(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        mat(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        if arch == "qwen2":
            vec(b + "attn_q.bias", sd[p + "self_attn.q_proj.bias"])
            vec(b + "attn_k.bias", sd[p + "self_attn.k_proj.bias"])
            vec(b + "attn_v.bias", sd[p + "self_attn.v_proj.bias"])
        mat(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        mat(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        mat(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"])
        vec(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        vec(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_gguf_roundtrip(path, model, ids):
    """transformers' GGUF reader, with its stock eager attention and causal mask, must see the
    same model: same logits (this also checks the causal mask built here)."""
    d, f = os.path.split(path)
    back = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    back.eval()
    with torch.no_grad():
        a = back(torch.tensor([ids])).logits[0].double()
    b = logits_with(model, ids, None)
    err = float((a - b).abs().max())
    assert err < 1e-4, f"{f}: transformers reads the GGUF back with logits {err} away"
    return err


def rows(t):
    return [[round(float(x), 5) for x in r] for r in t]


def make(key, arch, cfg_cls, model_cls, extra, seed, modes, rope_theta=10000.0):
    cfg = cfg_cls(**SHAPE, **extra)
    cfg._attn_implementation = "tiny_masked_eager"
    torch.manual_seed(seed)
    model = model_cls(cfg)
    model.eval()
    randomize(model, seed)

    factors = None
    inv = model.model.rotary_emb.inv_freq.double()
    d = SHAPE["head_dim"]
    default_inv = 1.0 / (rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if extra.get("rope_parameters", {}).get("rope_type") == "llama3":
        # Each frequency is divided by its factor: factor = unscaled / scaled (llama.cpp's meaning).
        factors = (default_inv / inv).numpy()
        assert factors.min() >= 1.0 and factors.max() > 1.5, factors
    else:
        assert torch.allclose(inv, default_inv, rtol=1e-6)

    n_kv = SHAPE["num_key_value_heads"]
    plans = {"full": None,
             "streaming": [[1] * n_kv for _ in range(SHAPE["num_hidden_layers"])],
             "duo": DUO_PATTERN}
    # Token sequences drawn until, for every masked mode, position sink + recent (the first whose
    # window hides a key) moves the logits clearly: with random weights, the one key hidden there
    # can happen to get almost no attention, and the tests need a visible difference at it.
    s = SINK + RECENT
    for attempt in range(50):
        rng = np.random.default_rng(seed * 1000 + attempt)
        ids = [int(x) for x in rng.integers(0, SHAPE["vocab_size"], N_TOKENS)]
        logits = {mode: logits_with(model, ids, plans[mode]) for mode in modes}
        for mode in modes:  # the masks change nothing before sink + recent
            assert torch.equal(logits[mode][:s], logits["full"][:s]), mode
        if all((logits[m][s] - logits["full"][s]).abs().max() > 0.05 for m in modes if m != "full"):
            break
    else:
        raise SystemExit(f"{key}: no token sequence whose logits move at sink + recent")

    gguf_path = os.path.join(OUT, f"{key}.gguf")
    write_gguf(model, arch, gguf_path, rope_theta, factors)
    out = {"model": f"{key}.gguf", "torch": torch.__version__, "transformers": transformers.__version__,
           "window": {"sink": SINK, "recent": RECENT}, "ids": ids, "logits": {}}
    if factors is not None:
        out["rope_freqs"] = [round(float(x), 6) for x in factors]
    else:
        out["gguf_roundtrip_max_abs"] = check_gguf_roundtrip(gguf_path, model, ids)
    for mode in modes:
        out["logits"][mode] = rows(logits[mode])
        if mode != "full":
            out[f"{mode}_diff_at_window"] = round(float((logits[mode][s] - logits["full"][s]).abs().max()), 5)
    if "duo" in modes:
        out["duo_pattern"] = DUO_PATTERN
    full = logits["full"]
    with open(os.path.join(OUT, f"{key}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"))
    spread = float(full.std())
    print(f"{key}: {len(ids)} tokens, modes {modes}, logit std {spread:.3f}", flush=True)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    make("tiny-llama", "llama", LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": True}, 1,
         ["full", "streaming", "duo"])
    make("tiny-qwen2", "qwen2", Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": False}, 2,
         ["full", "streaming", "duo"])
    make("tiny-llama31", "llama", LlamaConfig, LlamaForCausalLM,
         {"tie_word_embeddings": True,
          "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
         3, ["full"])


if __name__ == "__main__":
    main()
