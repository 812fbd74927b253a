#!/usr/bin/env python3
"""Reference dequantization fixtures from gguf-py (the GGUF project's own Python library),
an implementation independent of ours.

For every supported type: a few blocks of raw bytes and the floats gguf-py decodes them to.
Blocks are random bytes with sane f16 scales (every bit pattern of the quants is legal), so
the fixtures exercise all code paths, plus blocks quantized from random floats where gguf-py
can quantize. Run: /opt/refenv/bin/python dev/make_quant_fixtures.py
(gguf 0.19.0, numpy 2.x). Output: tests/fixtures/quant/<TYPE>.json, and
tests/fixtures/quant/real_rows.json: a row prefix of real tensors of the cached models
(SmolLM2 Q4_1/Q8_0, Qwen2.5-Coder Q4_K/Q6_K) with gguf-py's dequantization, when the models
are in ~/.cache/duo/models (or $DUO_MODELS).
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES, quants

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "quant")
# Byte offsets of the f16 scale fields in each block layout (set to sane values).
SCALES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
# Types added later, drawn from their own generator so the fixtures above stay as they were.
# gguf-py has no quantizer for these: random bytes (every code legal) only.
SCALES_LATER = {T.Q2_K: [80, 82], T.Q3_K: [108], T.IQ4_NL: [0], T.IQ4_XS: [0]}


def random_blocks(qtype, n_blocks, rng):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in {**SCALES, **SCALES_LATER}[qtype]:
        scales = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def write_types(types, rng):
    for qtype in types:
        block_elems, _ = GGML_QUANT_SIZES[qtype]
        cases = []
        raw = random_blocks(qtype, 4, rng)
        cases.append(("random_bytes", raw))
        try:
            x = rng.normal(0, 1, size=(1, block_elems * 2)).astype(np.float32)
            q = quants.quantize(x, qtype).reshape(-1).view(np.uint8)
            cases.append(("quantized_normal", q))
        except Exception as e:  # not every type has a numpy quantizer
            print(f"{qtype.name}: no quantizer ({type(e).__name__}); random bytes only")
        out = []
        for name, bytes_ in cases:
            deq = quants.dequantize(bytes_.reshape(1, -1), qtype).reshape(-1).astype(np.float32)
            out.append({"name": name, "hex": bytes_.tobytes().hex(), "n": int(deq.size),
                        "values": [float(v) for v in deq]})
        with open(os.path.join(OUT, f"{qtype.name}.json"), "w") as f:
            json.dump({"type": qtype.name, "type_id": int(qtype), "cases": out}, f)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261124)
    write_types(SCALES, rng)
    write_types(SCALES_LATER, np.random.default_rng(20261207))
    # Plain float types.
    x = rng.normal(0, 3, size=64).astype(np.float32)
    for qtype, arr in ((T.F16, x.astype(np.float16)), (T.BF16, None)):
        if qtype == T.BF16:
            bits = (x.view(np.uint32) >> 16).astype(np.uint16)
            deq = (bits.astype(np.uint32) << 16).view(np.float32)
            raw = bits.view(np.uint8)
        else:
            raw = arr.view(np.uint8)
            deq = arr.astype(np.float32)
        with open(os.path.join(OUT, f"{qtype.name}.json"), "w") as f:
            json.dump({"type": qtype.name, "type_id": int(qtype), "cases": [
                {"name": "normal", "hex": raw.tobytes().hex(), "n": int(deq.size),
                 "values": [float(v) for v in deq]}]}, f)
    real_rows()
    print("wrote", sorted(os.listdir(OUT)))


MODELS = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
# (model file, tensor type wanted, preferred tensor name or None for the first of that type)
REAL = [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", T.Q4_1, "blk.0.attn_q.weight"),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", T.Q8_0, "token_embd.weight"),
    ("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", T.Q4_K, None),
    ("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", T.Q6_K, None),
]
ROW = 5            # which row of each tensor
MAX_ELEMS = 256    # keep fixtures small: a prefix of whole blocks of that row


def real_rows():
    from gguf import GGUFReader
    out = []
    readers = {}
    for fname, qtype, name in REAL:
        path = os.path.join(MODELS, fname)
        if not os.path.exists(path):
            print("skip real rows: missing", path)
            return
        r = readers.setdefault(fname, GGUFReader(path))
        cands = [t for t in r.tensors if t.tensor_type == qtype and (name is None or t.name == name)]
        t = cands[0]
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        cols = int(t.shape[0])
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        row_bytes = cols // block_elems * block_bytes
        n = min(cols, MAX_ELEMS) // block_elems * block_elems
        row = raw[ROW * row_bytes: ROW * row_bytes + n // block_elems * block_bytes]
        deq = quants.dequantize(row.reshape(1, -1), qtype).reshape(-1).astype(np.float32)
        out.append({"model": fname, "tensor": t.name, "type": qtype.name, "type_id": int(qtype), "row": ROW,
                    "cols": cols, "n": int(n), "hex": row.tobytes().hex(),
                    # shortest strings that round-trip through float32
                    "values": [float(np.format_float_positional(v, unique=True)) for v in deq]})
    with open(os.path.join(OUT, "real_rows.json"), "w") as f:
        json.dump({"rows": out}, f)


if __name__ == "__main__":
    main()
