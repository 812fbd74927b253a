#!/usr/bin/env python3
"""Tiny Hugging Face directories of the architectures beside llama/qwen2, with what transformers
computes for them (tests/io/hf_arch_test.cpp), made like dev/make_hf_fixtures.py's (whose
tokenizer trainer and weight randomizer this reuses):

  tests/fixtures/hf/tiny-qwen3     qwen3: RMS norm of each head's q and k (q_norm/k_norm) before
                                   RoPE, no QKV bias, head_dim 16 with hidden_size 32 (so the
                                   attention width 64 differs from the hidden size), tied
                                   embeddings, f16 weights
  tests/fixtures/hf/tiny-qwen3.gguf  the same weights as llama.cpp's converter lays out a qwen3
                                   GGUF (arch qwen3, attn_q_norm/attn_k_norm, F16 matrices, F32
                                   norms) and the same tokenizer as its gpt2 vocabulary (tokens,
                                   merges, pre-tokenizer "smollm": the individual digits and GPT-2
                                   split this tokenizer.json declares), so the CLI can run both
  tests/fixtures/hf/tiny-mistral   mistral: llama-like, untied, sliding_window 48 (longer than
                                   the prompt and its greedy tokens, so full attention is what
                                   transformers computes), bf16 weights
  tests/fixtures/hf/tiny-gemma3    gemma3 (Gemma3ForCausalLM, model_type gemma3_text): 6 layers,
                                   5 local ones with sliding_window 16 and a global 6th, a prompt
                                   of ~40 tokens (so most positions see only their window),
                                   query_pre_attn_scalar 48 beside head_dim 32, linear RoPE scaling
                                   on the global layer, final_logit_softcapping 5, bf16 weights
  tests/fixtures/hf/tiny-gemma3.gguf  the same weights as llama.cpp's converter lays out a gemma3
                                   GGUF (norm weights stored as 1 + w in F32, the bf16 matrices
                                   and embedding as BF16, so the values are the same); llama.cpp
                                   has no query_pre_attn_scalar key (it takes head_dim), so
                                   tiny-gemma3.json also holds "gguf_logits": transformers on the
                                   same weights with query_pre_attn_scalar = head_dim

Beside each directory, <name>.json holds the prompt, its ids, transformers' float32 logits at
every position (the directory read back by from_pretrained, eager attention) and greedy tokens.
No tokenizer cases: the tokenizers are the same kinds make_hf_fixtures.py already checks.

Run: HF_HUB_OFFLINE=1 /tmp/h23-refenv/bin/python dev/make_hf_arch_fixtures.py [tiny-gemma3 ...]
     (a venv with torch, transformers, tokenizers, gguf, numpy from PyPI)
"""
import json
import os
import shutil
import sys

import gguf
import numpy as np
import torch
import transformers
from transformers import (AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig,
                          MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hf_fixtures import OUT, randomize, rows, train_tokenizer  # noqa: E402

PROMPT = "Hello world! The quick brown fox said"
# Longer than tiny-gemma3's sliding window of 16 tokens.
LONG_PROMPT = ("Hello world! The quick brown fox said that the lazy dog "
               "jumps over 12 fences.")
N_GREEDY = 10


def add_gpt2_tokenizer(w, tok, pre, add_bos):
    """A tokenizers BPE model as llama.cpp's converter writes it: tokens by id, special tokens as
    control (type 3), merges as "a b" strings, the pre-tokenizer by llama.cpp's name."""
    tj = json.loads(tok.to_str())
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    specials = {a["id"] for a in tj["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_add_bos_token(add_bos)


def write_qwen3_gguf(model, cfg, path, tok):
    """llama.cpp's qwen3 layout: HF rows as stored (NeoX RoPE, no Q/K permutation)."""
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_name("tiny-qwen3")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    add_gpt2_tokenizer(w, tok, "smollm", False)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].astype(np.float16))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].astype(np.float32))
    for l in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{l}.{hf}.weight"]
            w.add_tensor(f"blk.{l}.{gg}.weight", t.astype(np.float16 if t.ndim == 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gemma3_gguf(model, cfg, path, tok):
    """llama.cpp's gemma3 layout (convert_hf_to_gguf.py Gemma3Model): HF rows as stored, every
    norm weight stored as 1 + w (Gemma3RMSNorm's x * (1 + w)), no output.weight (tied)."""
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_name("tiny-gemma3")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_sliding_window(cfg.sliding_window)
    scaling = cfg.rope_parameters["full_attention"]
    if scaling.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])
    if cfg.final_logit_softcapping is not None:
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
             "post_feedforward_layernorm": "post_ffw_norm", "self_attn.q_norm": "attn_q_norm",
             "self_attn.k_norm": "attn_k_norm"}
    def bf16(t):  # exact: the values are bf16 already
        return (np.ascontiguousarray(t, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)

    bf = gguf.GGMLQuantizationType.BF16
    w.add_tensor("token_embd.weight", bf16(sd["model.embed_tokens.weight"]), raw_dtype=bf)
    w.add_tensor("output_norm.weight", (sd["model.norm.weight"] + 1).astype(np.float32))
    for l in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{l}.{hf}.weight"]
            if hf.endswith("norm"):
                w.add_tensor(f"blk.{l}.{gg}.weight", (t + 1).astype(np.float32))
            else:
                w.add_tensor(f"blk.{l}.{gg}.weight", bf16(t), raw_dtype=bf)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gemma3_gguf_reference(d, ids, cfg):
    """What transformers computes for the GGUF: the same weights with query_pre_attn_scalar =
    head_dim (the attention scale llama.cpp uses for every gemma3 but the 27B)."""
    back = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                query_pre_attn_scalar=cfg.head_dim)
    back.eval()
    with torch.no_grad():
        return rows(back(torch.tensor([ids])).logits[0].double())


def make(key, kind, cls, cfg, seed, dtype, vocab_size, specials, eos_ids, gguf_writer=None, prompt=PROMPT,
         extra=None):
    d = os.path.join(OUT, key)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tok = train_tokenizer(kind, vocab_size, specials, [])
    tok.save(os.path.join(d, "tokenizer.json"))
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0] if kind == "llama" else None,
            "eos_token": specials[1], "model_max_length": 256, "clean_up_tokenization_spaces": False}
    if kind != "llama":
        tcfg["add_bos_token"] = False
    json.dump(tcfg, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=1)

    torch.manual_seed(seed)
    model = cls(cfg)
    randomize(model, seed)
    model.to(dtype)
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.bos_token_id = tok.token_to_id(specials[0])
    model.save_pretrained(d)

    back = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    back.eval()
    ids = tok.encode(prompt).ids
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = back(x).logits[0].double()
        gen = back.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N_GREEDY, do_sample=False,
                            eos_token_id=None, pad_token_id=-1)[0, len(ids):].tolist()
    assert gen[0] == int(logits[-1].argmax()), (gen, int(logits[-1].argmax()))
    window = getattr(cfg, "sliding_window", None)
    if cfg.model_type == "gemma3_text":  # local layers: the prompt must reach well past the window
        assert len(ids) > 2 * window, (len(ids), window)
    else:
        assert window is None or len(ids) + N_GREEDY < window, "the reference must stay inside the window"
    if gguf_writer:
        gguf_writer(back, cfg, os.path.join(OUT, f"{key}.gguf"), tok)
    out = {"dir": key, "torch": torch.__version__, "transformers": transformers.__version__, "prompt": prompt,
           "ids": ids, "logits": rows(logits), "greedy": gen, "eos_ids": eos_ids}
    if extra:
        out.update(extra(d, ids, cfg))
    with open(os.path.join(OUT, f"{key}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"), ensure_ascii=False)
    print(f"{key}: files {sorted(os.listdir(d))}, {len(ids)} prompt ids, greedy {gen}, "
          f"logit std {float(logits.std()):.3f}")


SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6)


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    only = set(sys.argv[1:])  # fixture names to (re)make; all when none given
    global make
    make_all = make
    make = lambda key, *a, **k: make_all(key, *a, **k) if not only or key in only else None  # noqa: E731
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    qwen3 = Qwen3Config(**SHAPE, vocab_size=288, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                        bos_token_id=0, eos_token_id=0)
    make("tiny-qwen3", "qwen2", Qwen3ForCausalLM, qwen3, 13, torch.float16, 288, qwen_specials, [0, 2],
         write_qwen3_gguf)
    llama_specials = ["<s>", "</s>", "[INST]"]
    mistral = MistralConfig(**SHAPE, vocab_size=288, tie_word_embeddings=False, sliding_window=48,
                            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                            bos_token_id=0, eos_token_id=1)
    make("tiny-mistral", "llama", MistralForCausalLM, mistral, 14, torch.bfloat16, 288, llama_specials, [1])
    gemma_specials = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
    gemma3 = Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=48, sliding_window=16,
                              max_position_embeddings=256, rms_norm_eps=1e-6, vocab_size=288,
                              final_logit_softcapping=5.0, attn_logit_softcapping=None,
                              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 1000000.0},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                              bos_token_id=0, eos_token_id=1, pad_token_id=None)
    make("tiny-gemma3", "llama", Gemma3ForCausalLM, gemma3, 15, torch.bfloat16, 288, gemma_specials, [1, 3],
         write_gemma3_gguf, prompt=LONG_PROMPT,
         extra=lambda d, ids, cfg: {"gguf_logits": gemma3_gguf_reference(d, ids, cfg)})


if __name__ == "__main__":
    main()
