#!/usr/bin/env python3
"""Reference outputs of HF transformers for the fetched models (SmolLM2, Qwen2.5-Coder, Gemma-3-270M),
loaded from the same GGUF files (dequantized to float32): an implementation independent of ours.

For each prompt: the input ids (the C++ tests feed these ids, so this does not depend on our
tokenizer), top-20 logits and the log-sum-exp of the full row at a few positions, and the
64-token greedy continuation with the smallest top-1/top-2 logit gap seen along the way.

Gemma-3-270M is the base model and its GGUF has no chat template: its chat prompts use the
Gemma-3 instruction template of tests/fixtures/chat_templates/ (which writes <bos> itself), its raw
prompts get <bos> first (Gemma without it is far off its training distribution), and its greedy
continuations are 32 tokens (its test stays a few seconds: 262K-word LM head).

Run: HF_HUB_OFFLINE=1 /opt/refenv/bin/python dev/make_model_fixtures.py [smollm2|qwen|gemma|all]
(torch 2.x CPU, transformers 5.x, gguf 0.19; models fetched by scripts/fetch_models.py).
"""
import hashlib
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

MODELS = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "models")
TEMPLATES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "chat_templates")
GEN = 64

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Explain photosynthesis in two sentences.",
]
RAW_PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]
LONG_SEED = ("The history of the river town is long and quiet. Every spring the water rose, and every autumn the "
             "merchants came with their carts of grain, cloth and salt. ")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def topk(row, k=20):
    v, i = torch.topk(row, k)
    return {"ids": i.tolist(), "values": [round(float(x), 5) for x in v],
            "logsumexp": round(float(torch.logsumexp(row, 0)), 5)}


def run(key, gguf, template=None, raw_bos=False, gen_len=GEN):
    path = os.path.join(MODELS, gguf)
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf)
    if template:
        with open(os.path.join(TEMPLATES, template), encoding="utf-8") as f:
            tok.chat_template = f.read()
    bos = [tok.bos_token_id] if raw_bos else []
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=gguf, dtype=torch.float32)
    model.eval()
    model.generation_config.repetition_penalty = None
    prompts = []
    for p in CHAT_PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        prompts.append(("chat", p, tok.encode(text, add_special_tokens=False)))
    for p in RAW_PROMPTS:
        prompts.append(("raw", p, bos + tok.encode(p, add_special_tokens=False)))
    long_text = LONG_SEED * 60
    ids = (bos + tok.encode(long_text, add_special_tokens=False))[:1000]
    prompts.append(("raw", "long (1000 tokens of repeated prose)", ids))

    out = {"model": gguf, "sha256": sha256(path), "dtype": "float32", "torch": torch.__version__,
           "transformers": transformers.__version__, "prompts": []}
    for kind, desc, ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0]
            n = len(ids)
            positions = sorted({0, 1, n // 2, n - 1})
            at = {str(p): topk(logits[p]) for p in positions}
            # Greedy continuation, one token at a time with the cache, recording top-1/2 gaps.
            gen, gaps = [], []
            past = None
            cur = x
            eos = False
            for _ in range(gen_len):
                o = model(cur, past_key_values=past, use_cache=True)
                past = o.past_key_values
                row = o.logits[0, -1]
                v, i = torch.topk(row, 2)
                gaps.append(float(v[0] - v[1]))
                nxt = int(i[0])
                if nxt in (tok.eos_token_id,) or nxt in (model.generation_config.eos_token_id
                                                         if isinstance(model.generation_config.eos_token_id, list)
                                                         else [model.generation_config.eos_token_id]):
                    eos = True
                    break
                gen.append(nxt)
                cur = torch.tensor([[nxt]])
        out["prompts"].append({"kind": kind, "description": desc, "ids": ids, "top_logits": at,
                               "greedy": gen, "greedy_stopped_by_eos": eos,
                               "greedy_min_gap": round(min(gaps), 5),
                               "greedy_gaps": [round(g, 4) for g in gaps],
                               "greedy_text": tok.decode(gen)})
        print(f"{key}: {kind} {len(ids)} tokens, min gap {min(gaps):.4f}: {tok.decode(gen)[:80]!r}", flush=True)
    with open(os.path.join(OUT, f"{key}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("smollm2", "all"):
        run("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if which in ("qwen", "all"):
        run("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf")
    if which in ("gemma", "all"):
        run("gemma3-270m", "gemma-3-270m-q4_k_m.gguf", template="gemma-3-it.jinja", raw_bos=True, gen_len=32)


if __name__ == "__main__":
    main()
