#!/usr/bin/env python3
"""Re-saves a GGUF model as a Hugging Face directory through transformers' own GGUF reader (its
weights dequantized to float32, its tokenizer rebuilt as tokenizer.json), so that duo can run the
same model from both forms: tests/io/hf_real_test.cpp compares their greedy text.

  dev/hf_from_gguf.py [GGUF] [OUT_DIR]
  default GGUF: ~/.cache/duo/models/SmolLM2-135M-Instruct.Q4_1.gguf
  default OUT_DIR: the GGUF's name without its quantization and extension, plus -hf, beside it:
    SmolLM2-135M-Instruct.Q4_1.gguf         -> SmolLM2-135M-Instruct-hf
    Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf -> Qwen2.5-Coder-1.5B-Instruct-hf  (7.1 GB, ~12 GB RAM)

float32, not bf16: the GGUF's dequantized values (an f16 scale times a small integer, plus an f16
offset) mostly need more than bf16's 8 significant bits, so bf16 would round the weights and the
directory would no longer hold the GGUF's model; the test's greedy equality needs the same weights.

Needs torch, transformers, gguf and accelerate from PyPI (e.g. a venv); works offline.
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

models = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf")
d, f = os.path.split(os.path.abspath(src))
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(d, f.removesuffix(".gguf").rsplit(".", 1)[0] + "-hf")
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
# transformers marks a model read from GGUF as quantized and refuses to save it: its weights
# (already dequantized) go into a plain model of the same config. The plain model is made on the
# meta device and takes the tensors themselves (assign), so a 1.5B model is not held twice in RAM.
cfg = model.config
if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config
with torch.device("meta"):
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False, assign=True)
assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
plain.tie_weights()
meta = [n for n, p in plain.state_dict().items() if p.is_meta]
assert not meta, meta
del model
plain.save_pretrained(out, max_shard_size="300MB")
tok.save_pretrained(out)
print(f"{src} -> {out}: {sorted(os.listdir(out))}")
