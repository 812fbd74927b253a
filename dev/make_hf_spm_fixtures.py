#!/usr/bin/env python3
"""SentencePiece-style tokenizer.json files (model BPE with byte_fallback, as the converted Llama-2,
Mistral and Gemma tokenizers are laid out) and HF tokenizers' ids for them, as an implementation
independent of duo's, for tests/io/hf_spm_tokenizer_test.cpp. In tests/fixtures/hf_spm:

  legacy/     normalizer Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer, decoder
              Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)], BOS by the
              post-processor, merges as strings (Llama-2, Mistral v0.1)
  metaspace/  no normalizer, Metaspace(prepend_scheme "first", split false) pre-tokenizer, the decoder
              as in legacy/,
              merges as pairs, a non-special added token (Mistral v0.3, non-legacy Llama)
  split/      Metaspace(prepend_scheme "always", split true), ignore_merges, unk not fused
  gemma/      normalizer Replace(" ", "▁") only (no prefix), decoder without Strip (Gemma)

Beside each directory, <name>.json holds the strings and their ids (add_special_tokens off, and a
few with it on), HF's decode of those ids where it is not the string, and strings with invalid UTF-8 (which HF cannot take):
for those the reference is HF's ids of the string with each invalid byte replaced by a private-use
character outside the vocabulary, whose three byte-fallback tokens are then replaced by the one
byte token of the invalid byte (byte-fallback tokens never merge, so this is what byte fallback
of the raw byte gives).

The vocabulary is trained here (BpeTrainer, small alphabet so that rarer characters take the byte
fallback); the 256 <0xXX> tokens are put into the model's vocabulary after the specials, as the
converted SentencePiece models have them. BpeTrainer breaks ties between equally frequent pairs
in no fixed order, so each run gives a slightly different vocabulary (and ids); any of them is
a valid fixture.

Run: /tmp/h23-refenv/bin/python dev/make_hf_spm_fixtures.py   (tokenizers from PyPI)
"""
import json
import os
import random
import shutil

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf_spm")
SP = "\u2581"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's what they'd've said, isn't it?",
    "def forward(self, x):\n    return self.proj(x) + 1\n\nfor i in range(10):\n    print(i)\n",
    "In 2024 there were 1234567 tokens, 3.14159 radians and 42 answers.",
    "Attention is all you need; streaming heads keep sinks and a recent window.",
    "int main() { std::vector<int> v{1, 2, 3}; return v.size(); }",
    "Hello world! Hello there. HELLO AGAIN... hello, hello, hello.",
    "你好，世界。今天天气很好。 Ünïcödé façade café naïve résumé.",
    "Emoji: 😀 👍 — dashes and “quotes”.",
    "    indented\n\t\ttabs\n\n\nnewlines   and   spaces  ",
] * 20

PIECES = ["hello", "Hello", " world", "the", " The", "quick", "fox", "I'm", "DON'T", "they'll", "12345", "3.14",
          "0", "007", "1,000,000", " 42", "x=1", "def f(a, b):", "\n", "\n\n", "\t", " ", "  ", "   ", "    return x",
          "{}", "[]", "()", "<=", "!=", "->", "::", "//", "#", "😀", "👍🏽", "🚀", "🇫🇷", "你好", "世界", "天气", "龍",
          "日本語", "한국어", "e\u0301", "a\u0308", "n\u0303", "\u0301", "ñ", "ß", "Ω", "€", "—", "…", "'s", '"',
          "café", " naïve", "\r\n", " \n ", "  \n", "abc123def", "ABC", "mixedCASE", "snake_case", ".", ",", "!?",
          SP, SP + "hello", "<0x41>", "<unk>x", "\u00a0", "\u3000", "\u200b", "Ⅻ", "½", "\U0001F600\u200d"]
INVALID = [b"\x80", b"\xff", b"\xc0", b"\xe4\xb8", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xfe\xfe", b"\xc3"]
PLACEHOLDER = "\ue000"  # private use: never in the vocabulary, three byte-fallback tokens

SPECIALS = ["<unk>", "<s>", "</s>"]


def train():
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", SP)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, limit_alphabet=60, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tj = json.loads(tok.to_str())
    # The byte tokens go into the model's vocabulary right after the specials, as in Llama-2's file.
    vocab = tj["model"]["vocab"]
    order = sorted(vocab, key=lambda t: vocab[t])
    byte_tokens = ["<0x%02X>" % b for b in range(256)]
    new = SPECIALS + byte_tokens + [t for t in order if t not in SPECIALS and t not in byte_tokens]
    tj["model"]["vocab"] = {t: i for i, t in enumerate(new)}
    for a in tj["added_tokens"]:
        a["id"] = tj["model"]["vocab"][a["content"]]
        a["normalized"] = False
    return tj


def seq_decoder(strip):
    steps = [{"type": "Replace", "pattern": {"String": SP}, "content": " "}, {"type": "ByteFallback"},
             {"type": "Fuse"}]
    if strip:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def metaspace(scheme, split):
    return {"type": "Metaspace", "replacement": SP, "prepend_scheme": scheme, "split": split}


def bos_template(tj):
    bos = tj["model"]["vocab"]["<s>"]
    return json.loads(processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                    special_tokens=[("<s>", bos)]).__getstate__())


def variant(base, name):
    tj = json.loads(json.dumps(base))
    m = tj["model"]
    if name == "legacy":
        tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SP},
                                                                {"type": "Replace", "pattern": {"String": " "},
                                                                 "content": SP}]}
        tj["pre_tokenizer"] = None
        tj["decoder"] = seq_decoder(True)
        tj["post_processor"] = bos_template(tj)
        m["merges"] = [" ".join(x) if isinstance(x, list) else x for x in m["merges"]]
    elif name == "metaspace":
        tj["normalizer"] = None
        tj["pre_tokenizer"] = metaspace("first", False)
        tj["decoder"] = seq_decoder(True)  # what transformers' LlamaConverter writes beside Metaspace
        tj["post_processor"] = bos_template(tj)
        m["merges"] = [x.split(" ") if isinstance(x, str) else x for x in m["merges"]]
        tj["added_tokens"].append({"id": len(m["vocab"]), "content": "<tool>", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": False})
    elif name == "split":
        tj["normalizer"] = None
        tj["pre_tokenizer"] = metaspace("always", True)
        tj["decoder"] = seq_decoder(True)
        tj["post_processor"] = None
        m["ignore_merges"] = True
        m["fuse_unk"] = False
    elif name == "gemma":
        tj["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": SP}
        tj["pre_tokenizer"] = None
        tj["decoder"] = seq_decoder(False)
        tj["post_processor"] = bos_template(tj)
    return tj


def strings(rng, n, added):
    out = []
    for i in range(n):
        k = rng.randint(1, 7)
        parts = [rng.choice(PIECES) for _ in range(k)]
        if i % 8 == 0:
            parts.insert(rng.randint(0, k), rng.choice(added))
        if i % 6 == 0:
            parts.insert(0, " " * rng.randint(1, 3))
        if i % 9 == 0:
            parts.append(" " * rng.randint(1, 3))
        if i % 11 == 0:
            parts.insert(rng.randint(0, k), "".join(chr(rng.randint(0x20, 0x7e)) for _ in range(rng.randint(1, 12))))
        if i % 13 == 0:
            parts.insert(rng.randint(0, k), chr(rng.choice([rng.randint(0x4e00, 0x9fff), rng.randint(0x1f300, 0x1faff),
                                                            rng.randint(0x300, 0x36f), rng.randint(0xa0, 0x24f)])))
        out.append("".join(parts))
    out += ["", " ", "  ", "\n", "a", " a", "a ", "0123456789", SP, SP + SP, " " + SP, " ".join(CORPUS[:9])]
    return out


def make(base, name, n, seed):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tj = variant(base, name)
    text = json.dumps(tj, ensure_ascii=False)
    tok = Tokenizer.from_str(text)  # HF parses it: the file is one tokenizers accepts
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    rng = random.Random(seed)
    added = [a["content"] for a in tj["added_tokens"]]
    cases = []
    for s in strings(rng, n, added):
        ids = tok.encode(s, add_special_tokens=False).ids
        case = {"text": s, "ids": ids}
        decoded = tok.decode(ids, skip_special_tokens=False)
        if decoded != s:  # kept only where decoding does not give the text back
            case["decoded"] = decoded
        cases.append(case)
    with_bos = [{"text": s, "ids": tok.encode(s, add_special_tokens=True).ids} for s in strings(rng, 20, added)]
    ph = tok.encode(PLACEHOLDER, add_special_tokens=False).ids[-3:]
    vocab = tj["model"]["vocab"]
    invalid = []
    for i in range(60):
        parts = [rng.choice(PIECES).encode() for _ in range(rng.randint(0, 4))]
        bad = rng.choice(INVALID)
        parts.insert(rng.randint(0, len(parts)), bad)
        raw = b"".join(parts)
        # Each invalid byte: the placeholder's three tokens in HF's ids, its own byte token in duo's.
        esc = raw.decode("utf-8", errors="surrogateescape")
        bad_bytes = [ord(c) - 0xdc00 for c in esc if 0xdc80 <= ord(c) <= 0xdcff]
        marked = "".join(PLACEHOLDER if 0xdc80 <= ord(c) <= 0xdcff else c for c in esc)
        hf = tok.encode(marked, add_special_tokens=False).ids
        want, j, b = [], 0, 0
        while j < len(hf):
            if hf[j:j + 3] == ph:
                want.append(vocab["<0x%02X>" % bad_bytes[b]])
                b, j = b + 1, j + 3
            else:
                want.append(hf[j])
                j += 1
        if b != len(bad_bytes):
            continue
        invalid.append({"hex": raw.hex(), "ids": want})
    ref = {"tokenizers": tokenizers.__version__, "cases": cases, "cases_with_bos": with_bos, "invalid_utf8": invalid}
    with open(os.path.join(OUT, name + ".json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
    print(name, len(cases), "strings,", sum(len(c["ids"]) for c in cases), "ids,", len(invalid), "invalid")


def main():
    os.makedirs(OUT, exist_ok=True)
    base = train()
    for i, name in enumerate(["legacy", "metaspace", "split", "gemma"]):
        make(base, name, 900, 100 + i)


if __name__ == "__main__":
    main()
