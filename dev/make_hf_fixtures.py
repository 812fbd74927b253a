#!/usr/bin/env python3
"""Tiny Hugging Face model directories, and what transformers / tokenizers compute for them, as an
implementation independent of ours, for tests/io/hf_model_test.cpp and tests/io/hf_tokenizer_test.cpp:

  tests/fixtures/hf/tiny-llama   llama, GQA 4/2, tied embeddings, rope theta 50000, weights saved in
                                 bf16 by save_pretrained in several shards (model-0000x-of-0000n +
                                 model.safetensors.index.json); its tokenizer splits with the Llama-3
                                 regex declared as a Split pre-tokenizer, ignore_merges, merges stored
                                 as strings, a BOS added by the post-processor
  tests/fixtures/hf/tiny-qwen2   qwen2, QKV biases, untied output, weights in f16 in one
                                 model.safetensors, config.json in the older (transformers 4) form
                                 with a top-level rope_theta; its tokenizer is SmolLM-style (Digits,
                                 then ByteLevel with its own GPT-2 regex), merges stored as pairs, and
                                 the model's vocabulary larger than the tokenizer's (padding rows)

Beside each directory, <name>.json holds the prompt, its ids (HF tokenizer), transformers' float32
logits for every position (from the directory as saved, read back by from_pretrained), greedy
tokens from generate(), and HF tokenizers' ids of a few hundred strings.

The tokenizers are trained here (tokenizers' BpeTrainer) on a small fixed corpus, so the fixtures
stay small (< 1 MB in all).

Run: HF_HUB_OFFLINE=1 /tmp/h23-refenv/bin/python dev/make_hf_fixtures.py [--real]
     (a venv with torch, transformers, tokenizers from PyPI); --real makes only
     <name>-hf.tokenizer.json, HF tokenizers' ids for the real models' directories that
     dev/hf_from_gguf.py made (skipped when absent)
"""
import json
import math
import os
import random
import shutil
import sys

import torch
import transformers
import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's what they'd've said, isn't it?",
    "def forward(self, x):\n    return self.proj(x) + 1\n\nfor i in range(10):\n    print(i)\n",
    "In 2024 there were 1234567 tokens, 3.14159 radians and 42 answers.",
    "Attention is all you need; streaming heads keep sinks and a recent window.",
    "The model reads its weights from safetensors files, memory-mapped, in bf16 or f16.",
    "int main() { std::vector<int> v{1, 2, 3}; return v.size(); }",
    "Hello world! Hello there. HELLO AGAIN... hello, hello, hello.",
    "你好，世界。今天天气很好。 Ünïcödé façade café naïve résumé.",
    "Emoji: 😀 👍🏽 🚀 — dashes – and “quotes” ‘here’.",
    "    indented\n\t\ttabs\n\n\nnewlines   and   spaces  ",
]
CORPUS = CORPUS * 20

PIECES = ["hello", "Hello", " world", "the", " The", "quick", "fox", "I'm", "DON'T", "they'll", "we've",
          "12345", "3.14", "0", "007", "1,000,000", " 42", "x=1", "def f(a, b):", "\n", "\n\n", "\t", "   ",
          "    return x", "{}", "[]", "()", "<=", "!=", "->", "::", "//", "#", "😀", "👍🏽", "🚀", "你好", "世界",
          "e\u0301", "a\u0308", "ñ", "ß", "Ω", "€", "—", "…", "'s", "'", '"', "café", " naïve", "\r\n",
          " \n ", "  \n", "abc123def", "ABC", "mixedCASE", "snake_case", "kebab-case", ".", ",", "!?"]


def train_tokenizer(kind, vocab_size, specials, user_tokens):
    if kind == "llama":
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in user_tokens])
    if kind == "llama":
        bos = specials[0]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def test_strings(rng, specials, user_tokens, n=300):
    out = []
    for i in range(n):
        k = rng.randint(1, 8)
        parts = [rng.choice(PIECES) for _ in range(k)]
        if i % 10 == 0:
            parts.insert(rng.randint(0, k), rng.choice(specials + user_tokens))
        if i % 7 == 0:
            parts.insert(0, " " * rng.randint(1, 4))
        out.append("".join(parts))
    out += ["", " ", "  ", "\n", "a", "0123456789", " ".join(CORPUS[:10])]
    return out


def randomize(model, seed):
    """Weights large enough that attention is peaked, as in make_tiny_model_fixtures.py."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                scale = 2.5 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def rows(t):
    return [[round(float(x), 5) for x in r] for r in t]


def make(key, kind, cfg, seed, dtype, shard, vocab_size, specials, user_tokens, eos_ids, legacy_config):
    d = os.path.join(OUT, key)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tok = train_tokenizer(kind, vocab_size, specials, user_tokens)
    tok.save(os.path.join(d, "tokenizer.json"))
    tj = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
    merges = tj["model"]["merges"]
    if kind == "llama" and merges and isinstance(merges[0], list):  # the older string form
        tj["model"]["merges"] = [" ".join(m) for m in merges]
    json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False)
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0] if kind == "llama" else None,
            "eos_token": specials[1], "model_max_length": 256, "clean_up_tokenization_spaces": False}
    if kind == "qwen2":
        tcfg["add_bos_token"] = False
    json.dump(tcfg, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=1)

    torch.manual_seed(seed)
    model = (LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM)(cfg)
    randomize(model, seed)
    model.to(dtype)
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.bos_token_id = tok.token_to_id(specials[0])
    model.save_pretrained(d, max_shard_size=shard)
    if legacy_config:  # transformers 4's config.json: top-level rope_theta, rope_scaling, torch_dtype
        c = json.load(open(os.path.join(d, "config.json")))
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp["rope_theta"]
        c["rope_scaling"] = None
        c["torch_dtype"] = c.pop("dtype", "float16")
        json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=2)

    # The reference: the directory as saved, read back by transformers, computed in float32.
    back = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    back.eval()
    assert back.config.rope_parameters["rope_theta"] == cfg.rope_parameters["rope_theta"]
    # Ids from tokenizers itself, the post-processor adding the BOS: transformers 5's
    # AutoTokenizer rebuilds a qwen2 model's tokenizer with Qwen2's own normalizer and split
    # regex rather than the ones this tokenizer.json declares.
    prompt = "Hello world! The quick brown fox 123 said: def f(x): return x"
    ids = tok.encode(prompt).ids
    if kind == "llama":
        assert AutoTokenizer.from_pretrained(d)(prompt)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = back(x).logits[0].double()
        # An explicit attention mask: generate() would otherwise take pad_token_id (0, the BOS
        # here) for padding and mask the BOS out.
        gen = back.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                            eos_token_id=None, pad_token_id=-1)[0, len(ids):].tolist()
    assert gen[0] == int(logits[-1].argmax()), (gen, int(logits[-1].argmax()))

    rng = random.Random(seed)
    strings = test_strings(rng, specials, user_tokens)
    cases = [{"text": s, "ids": tok.encode(s, add_special_tokens=False).ids} for s in strings]
    with_bos = [{"text": s, "ids": tok.encode(s).ids} for s in strings[:20]]
    out = {"dir": key, "torch": torch.__version__, "transformers": transformers.__version__,
           "tokenizers": tokenizers.__version__, "prompt": prompt, "ids": ids, "logits": rows(logits),
           "greedy": gen, "tokenizer_cases": cases, "tokenizer_cases_with_bos": with_bos,
           "n_tokenizer_vocab": tok.get_vocab_size(), "eos_ids": eos_ids}
    with open(os.path.join(OUT, f"{key}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"), ensure_ascii=False)
    files = sorted(os.listdir(d))
    print(f"{key}: files {files}, {len(ids)} prompt ids, greedy {gen}, logit std {float(logits.std()):.3f}")


SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5)


def real_tokenizer_cases(name, seed):
    """HF tokenizers' ids for a real tokenizer.json (a model re-saved by dev/hf_from_gguf.py),
    when that directory is cached: tests/io/hf_real_test.cpp checks duo against them."""
    models = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
    d = os.path.join(models, name)
    if not os.path.isdir(d):
        print(f"{d} not found: skipped (dev/hf_from_gguf.py makes it)")
        return
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    specials = [a.content for a in tok.get_added_tokens_decoder().values()][:8]
    strings = test_strings(random.Random(seed), specials, [], n=400)
    cases = [{"text": s, "ids": tok.encode(s, add_special_tokens=False).ids} for s in strings]
    out = {"dir": name, "tokenizers": tokenizers.__version__, "tokenizer_cases": cases}
    with open(os.path.join(OUT, f"{name}.tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"), ensure_ascii=False)
    print(f"{name}: {len(cases)} tokenizer cases")


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    real_tokenizer_cases("SmolLM2-135M-Instruct-hf", 13)
    real_tokenizer_cases("Qwen2.5-Coder-1.5B-Instruct-hf", 14)
    if "--real" in sys.argv[1:]:  # only the real tokenizers' cases, the tiny models left as they are
        return
    llama_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    llama = LlamaConfig(**SHAPE, vocab_size=384, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
                        bos_token_id=0, eos_token_id=1)
    make("tiny-llama", "llama", llama, 11, torch.bfloat16, "60KB", 383, llama_specials, ["<tool>"], [1, 2], False)
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    qwen = Qwen2Config(**SHAPE, vocab_size=336, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       bos_token_id=0, eos_token_id=0)
    make("tiny-qwen2", "qwen2", qwen, 12, torch.float16, "10MB", 316, qwen_specials, ["<think>"], [0, 2], True)


if __name__ == "__main__":
    main()
