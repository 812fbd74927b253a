#!/usr/bin/env python3
"""A tiny llama Hugging Face directory with the RoPE base of Llama-3-8B-Instruct-Gradient-4194k
(config.json rope_theta 45218125210.0, no rope scaling; the 1048k model has 2804339835.0 and, in
its later revision, 3580165449.0), and what transformers computes for it at positions up to 2K,
for tests/io/hf_long_rope_test.cpp:

  tests/fixtures/hf/tiny-llama-4194k       llama, head_dim 64 (so the q8/q4 KV types apply),
                                           GQA 4/2, 2048 positions, bf16 weights, the tiny-llama
                                           tokenizer kind (Llama-3 split regex, a BOS)
  tests/fixtures/hf/tiny-llama-4194k.json  2048 seeded random ids (no specials), transformers'
                                           float32 logits at a few dozen positions spread up to
                                           2047 (eager attention), its float32 inv_freq, and how
                                           far the logits move with the 1048k model's theta
                                           instead (what the test's tolerance must stay below)

transformers computes inv_freq = 1 / base ** (arange(0, dim, 2) / dim) in float32 and the angle
position * inv_freq as one float32 product (rotary_emb's matmul with K = 1).

Run: HF_HUB_OFFLINE=1 /tmp/h23-refenv/bin/python dev/make_hf_long_rope_fixture.py
     (a venv with torch, transformers, tokenizers from PyPI)
"""
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hf_fixtures import OUT, randomize, rows, train_tokenizer  # noqa: E402

KEY = "tiny-llama-4194k"
THETA_4194K = 45218125210.0
THETA_1048K = 2804339835.0
N_POS = 2048
# Positions whose logits are kept: the start, every 97th (odd, so not only powers of two), the end.
POSITIONS = sorted(set(list(range(4)) + list(range(0, N_POS, 97)) + list(range(N_POS - 4, N_POS))))


def config(theta):
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, max_position_embeddings=N_POS, rms_norm_eps=1e-5,
                       vocab_size=384, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": theta}, bos_token_id=0,
                       eos_token_id=1)


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    d = os.path.join(OUT, KEY)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok = train_tokenizer("llama", 384, specials, [])
    tok.save(os.path.join(d, "tokenizer.json"))
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0], "eos_token": specials[1],
            "model_max_length": N_POS, "clean_up_tokenization_spaces": False}
    json.dump(tcfg, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=1)

    seed = 21
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config(THETA_4194K))
    randomize(model, seed)
    model.to(torch.bfloat16)
    model.generation_config.eos_token_id = [1, 2]
    model.generation_config.bos_token_id = 0
    model.save_pretrained(d)

    back = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    back.eval()
    assert back.config.rope_parameters["rope_theta"] == THETA_4194K
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(specials), 384, (N_POS,), generator=g).tolist()
    logits = logits_of(back, ids)
    inv_freq = back.model.rotary_emb.inv_freq.float()

    # The same weights under the 1048k model's theta: the logits a wrong base would give.
    other = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                 rope_parameters={"rope_type": "default",
                                                                  "rope_theta": THETA_1048K})
    other.eval()
    moved = (logits_of(other, ids) - logits)[POSITIONS].abs().max().item()

    out = {"dir": KEY, "torch": torch.__version__, "transformers": transformers.__version__,
           "rope_theta": THETA_4194K, "ids": ids, "positions": POSITIONS,
           "logits": rows(logits[POSITIONS]), "inv_freq": [float(x) for x in inv_freq],
           "max_logit_change_with_1048k_theta": round(moved, 5)}
    with open(os.path.join(OUT, f"{KEY}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"{KEY}: files {sorted(os.listdir(d))}, {len(POSITIONS)} positions of {N_POS}, logit std "
          f"{float(logits.std()):.3f}, max change with theta {THETA_1048K}: {moved:.4f}")


if __name__ == "__main__":
    main()
