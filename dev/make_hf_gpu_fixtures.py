#!/usr/bin/env python3
"""Tiny Hugging Face directories that the CUDA backend can run, with what transformers computes for
them (tests/cuda/hf_forward_test.cpp). The CPU fixtures of make_hf_fixtures.py and
make_hf_arch_fixtures.py have heads of 16 dimensions; the CUDA attention kernels take 64 or 128, so
these are the same architectures and weight formats with head_dim 64 (hidden_size 64, so the
attention width 256 differs from the hidden size), made by make_hf_arch_fixtures.make:

  tests/fixtures/hf/tiny-llama-d64     llama, tied embeddings, bf16 weights
  tests/fixtures/hf/tiny-mistral-d64   mistral, untied, sliding_window 48 (beyond prompt + greedy
                                       tokens), bf16 weights
  tests/fixtures/hf/tiny-qwen2-d64     qwen2, QKV biases, untied, f16 weights (the GPU rounds them
                                       to bf16)
  tests/fixtures/hf/tiny-qwen3-d64     qwen3, per-head q/k RMS norm before RoPE, tied, f16 weights
  tests/fixtures/hf/tiny-qwen3-d64.gguf  the same weights as llama.cpp lays out a qwen3 GGUF
  tests/fixtures/hf/tiny-gemma3-d64    gemma3 as tiny-gemma3 (6 layers: 5 local with sliding_window
                                       16, a global 6th; query_pre_attn_scalar 48, linear RoPE
                                       scaling on the global layer, the long prompt), bf16 weights;
                                       final_logit_softcapping 10 (it bites at the top logits and
                                       leaves 7 of the 10 greedy steps a top-1 gap >= 0.25, which
                                       the GPU test needs; 5 left one)
  tests/fixtures/hf/tiny-gemma3-d64.gguf  the same weights in llama.cpp's gemma3 layout; its
                                       reference is "gguf_logits" (query_pre_attn_scalar = head_dim)

Beside each directory, <name>.json holds the prompt, its ids, transformers' float32 logits at every
position and greedy tokens (make_hf_arch_fixtures.py's format).

Run: HF_HUB_OFFLINE=1 /tmp/h23-refenv/bin/python dev/make_hf_gpu_fixtures.py [tiny-gemma3-d64 ...]
     (a venv with torch, transformers, tokenizers, gguf, numpy from PyPI)
"""
import os
import sys

import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_arch_fixtures  # noqa: E402
from make_hf_arch_fixtures import (LONG_PROMPT, gemma3_gguf_reference, write_gemma3_gguf,  # noqa: E402
                                   write_qwen3_gguf)

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=256, rms_norm_eps=1e-6)


def rope(theta):
    return {"rope_type": "default", "rope_theta": theta}


def make(key, *args, **kwargs):
    if not ONLY or key in ONLY:
        make_hf_arch_fixtures.make(key, *args, **kwargs)


ONLY = set(sys.argv[1:])  # fixture names to (re)make; all when none given


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    llama_specials = ["<s>", "</s>", "[INST]"]
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    make("tiny-llama-d64", "llama", LlamaForCausalLM,
         LlamaConfig(**SHAPE, vocab_size=288, tie_word_embeddings=True, rope_parameters=rope(50000.0),
                     bos_token_id=0, eos_token_id=1),
         21, torch.bfloat16, 288, llama_specials, [1])
    make("tiny-mistral-d64", "llama", MistralForCausalLM,
         MistralConfig(**SHAPE, vocab_size=288, tie_word_embeddings=False, sliding_window=48,
                       rope_parameters=rope(1000000.0), bos_token_id=0, eos_token_id=1),
         22, torch.bfloat16, 288, llama_specials, [1])
    make("tiny-qwen2-d64", "qwen2", Qwen2ForCausalLM,
         Qwen2Config(**SHAPE, vocab_size=288, tie_word_embeddings=False, rope_parameters=rope(10000.0),
                     bos_token_id=0, eos_token_id=0),
         23, torch.float16, 288, qwen_specials, [0, 2])
    make("tiny-qwen3-d64", "qwen2", Qwen3ForCausalLM,
         Qwen3Config(**SHAPE, vocab_size=288, tie_word_embeddings=True, rope_parameters=rope(1000000.0),
                     bos_token_id=0, eos_token_id=0),
         24, torch.float16, 288, qwen_specials, [0, 2], write_qwen3_gguf)
    gemma_specials = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
    gemma3 = Gemma3TextConfig(**SHAPE | dict(num_hidden_layers=6), query_pre_attn_scalar=48, sliding_window=16,
                              vocab_size=288, final_logit_softcapping=10.0, attn_logit_softcapping=None,
                              rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 1000000.0},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                              bos_token_id=0, eos_token_id=1, pad_token_id=None)
    make("tiny-gemma3-d64", "llama", Gemma3ForCausalLM, gemma3, 26, torch.bfloat16, 288, gemma_specials, [1, 3],
         write_gemma3_gguf, prompt=LONG_PROMPT,
         extra=lambda d, ids, cfg: {"gguf_logits": gemma3_gguf_reference(d, ids, cfg)})


if __name__ == "__main__":
    main()
