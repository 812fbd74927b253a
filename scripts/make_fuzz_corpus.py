#!/usr/bin/env python3
"""Writes the small seed corpus of the GGUF fuzz target (tests/fuzz/corpus/gguf): valid files
of both versions with every metadata type, arrays, tensors of several types, and a model-like
file with llama metadata and a tiny vocabulary. Stdlib only."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fuzz", "corpus", "gguf")


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(version, kvs, tensors, alignment=32):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, payload in kvs:
        out += s(key) + payload
    offs, off = [], 0
    for name, typ, dims, data in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<q", d) for d in dims)
        out += struct.pack("<IQ", typ, off)
        offs.append(off)
        off += (len(data) + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    base = len(out)
    for (name, typ, dims, data), o in zip(tensors, offs):
        out += b"\0" * (base + o - len(out)) + data
    return out


def v(typ, fmt, x):
    return struct.pack("<I", typ) + struct.pack("<" + fmt, x)


def vstr(x):
    return struct.pack("<I", 8) + s(x)


def varr_str(xs):
    return struct.pack("<IIQ", 9, 8, len(xs)) + b"".join(s(x) for x in xs)


def varr_i32(xs):
    return struct.pack("<IIQ", 9, 5, len(xs)) + b"".join(struct.pack("<i", x) for x in xs)


def main():
    os.makedirs(OUT, exist_ok=True)
    scalars = [("u8", v(0, "B", 7)), ("i8", v(1, "b", -7)), ("u16", v(2, "H", 700)), ("i16", v(3, "h", -700)),
               ("u32", v(4, "I", 70000)), ("i32", v(5, "i", -70000)), ("f32", v(6, "f", 1.5)),
               ("bool", v(7, "B", 1)), ("str", vstr("hello")), ("u64", v(10, "Q", 1 << 40)),
               ("i64", v(11, "q", -(1 << 40))), ("f64", v(12, "d", 2.25))]
    f32 = struct.pack("<8f", *range(8))
    q8 = (struct.pack("<e", 0.5) + bytes(range(32))) * 2
    q41 = (struct.pack("<ee", 0.1, -0.2) + bytes(range(16))) * 2
    for version in (2, 3):
        with open(os.path.join(OUT, f"scalars_v{version}.gguf"), "wb") as f:
            f.write(gguf(version, scalars, [("a", 0, [8], f32), ("b", 8, [32, 2], q8), ("c", 3, [64], q41)]))
    vocab = ["<unk>", "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa"]
    model = [("general.architecture", vstr("llama")), ("llama.block_count", v(4, "I", 1)),
             ("llama.embedding_length", v(4, "I", 32)), ("llama.feed_forward_length", v(4, "I", 64)),
             ("llama.attention.head_count", v(4, "I", 4)), ("llama.attention.head_count_kv", v(4, "I", 2)),
             ("llama.attention.layer_norm_rms_epsilon", v(6, "f", 1e-5)), ("tokenizer.ggml.model", vstr("gpt2")),
             ("tokenizer.ggml.pre", vstr("smollm")), ("tokenizer.ggml.tokens", varr_str(vocab)),
             ("tokenizer.ggml.token_type", varr_i32([2, 3, 3, 1, 1, 1, 1, 1])),
             ("tokenizer.ggml.merges", varr_str(["a b", "Ġ a"])), ("tokenizer.ggml.bos_token_id", v(4, "I", 1))]
    embd = struct.pack("<256f", *([0.25] * 256))
    with open(os.path.join(OUT, "model_v3.gguf"), "wb") as f:
        f.write(gguf(3, model, [("token_embd.weight", 0, [32, 8], embd)]))
    # Nested arrays, a bool array, a custom alignment and K-quant / BF16 / 3-d tensors.
    nested = struct.pack("<IIQ", 9, 9, 2) + struct.pack("<IQ", 5, 2) + struct.pack("<ii", 1, -2) \
        + struct.pack("<IQ", 8, 1) + s("x")
    kvs = [("general.alignment", v(4, "I", 64)), ("nested", nested),
           ("bools", struct.pack("<IIQ", 9, 7, 3) + bytes([1, 0, 1])),
           ("f64s", struct.pack("<IIQ", 9, 12, 2) + struct.pack("<2d", 0.5, -1.0))]
    q4k = bytes(range(144))
    bf16 = bytes(2 * 3 * 2 * 2)
    with open(os.path.join(OUT, "nested_v3.gguf"), "wb") as f:
        f.write(gguf(3, kvs, [("k", 12, [256, 1], q4k), ("bf", 30, [3, 2, 2], bf16)], alignment=64))
    with open(os.path.join(OUT, "empty_v3.gguf"), "wb") as f:
        f.write(gguf(3, [], []))
    print(sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
