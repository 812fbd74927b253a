#!/usr/bin/env python3
"""Re-saves a GGUF model as a Hugging Face directory through transformers' own GGUF reader (its
weights dequantized to float32, its tokenizer rebuilt as tokenizer.json), so that duo can run the
same model from both forms: tests/io/hf_real_test.cpp compares their greedy text.

  dev/hf_from_gguf.py [GGUF] [OUT_DIR]
  default: ~/.cache/duo/models/SmolLM2-135M-Instruct.Q4_1.gguf -> ~/.cache/duo/models/SmolLM2-135M-Instruct-hf

Needs torch, transformers, gguf and accelerate from PyPI (e.g. a venv); works offline.
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

models = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf")
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(models, "SmolLM2-135M-Instruct-hf")
d, f = os.path.split(os.path.abspath(src))
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
# transformers marks a model read from GGUF as quantized and refuses to save it: its weights
# (already dequantized) go into a plain model of the same config.
cfg = model.config
if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config
plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
plain.tie_weights()
plain.save_pretrained(out, max_shard_size="300MB")
tok.save_pretrained(out)
print(f"{src} -> {out}: {sorted(os.listdir(out))}")
