#!/usr/bin/env python3
"""Unigram tokenizer.json files (the model of T5, ALBERT, XLNet, mT5 and other SentencePiece
conversions) and HF tokenizers' ids for them, as an implementation independent of duo's, for
tests/tokenizer/hf_unigram_test.cpp. In tests/fixtures/hf_unigram:

  t5/         normalizer Sequence[Strip(right), Replace(Regex " {2,}", "▁")], Metaspace(prepend_scheme
              "always", split true) pre-tokenizer and decoder, unk_id, no byte_fallback, the EOS
              template "$A </s>" (as transformers converts T5 without its charsmap)
  legacy/     byte_fallback with the 256 <0xXX> pieces in the vocab (score 0, as converted
              SentencePiece models list them), normalizer Sequence[Prepend("▁"), Replace(" ", "▁")],
              no pre-tokenizer, decoder Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)],
              the BOS template
  first/      byte_fallback, normalizer Sequence[Replace("``", "\""), Replace("''", "\""), Strip(both)]
              (ALBERT's quote replacements), Metaspace(prepend_scheme "first", split false), decoder
              Sequence[Metaspace(first), ByteFallback, Fuse], a non-special added token
  nfkc/       normalizer Sequence[Precompiled(nmt_nfkc charsmap), Replace(Regex " {2,}", " ")],
              Metaspace(add_prefix_space true) pre-tokenizer and decoder (as transformers converted T5
              before prepend_scheme); the charsmap is the one sentencepiece (PyPI) compiles for
              normalization_rule_name nmt_nfkc
  never/      no normalizer, Metaspace(prepend_scheme "never", split true), decoder Metaspace(never),
              no byte_fallback

Beside each directory, <name>.json holds the strings, their ids (add_special_tokens off, and a
few with it on) and HF's decode of the ids, and strings with invalid UTF-8 (which HF cannot
take): for those the reference is HF's ids of the string with each invalid byte replaced by a
private-use character outside the vocabulary. An unknown character is the unknown token, and a
run of them one unknown token (HF's Unigram always fuses them), so without byte_fallback the ids
are the same; with byte_fallback the run becomes its bytes' tokens, where the placeholder's three
are replaced by the one of the invalid byte. The decoded text of those is HF's decode with the
placeholder read back as the invalid byte (duo keeps bytes HF would print as U+FFFD).

The vocabulary is trained here (UnigramTrainer); any run's vocabulary is a valid fixture.

Run: python3 -m venv /tmp/unigram-venv && /tmp/unigram-venv/bin/pip install tokenizers sentencepiece protobuf
     /tmp/unigram-venv/bin/python dev/make_hf_unigram_fixtures.py
"""
import base64
import io
import json
import os
import random
import shutil

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

import tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf_unigram")
SP = "\u2581"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's what they'd've said, isn't it?",
    "def forward(self, x):\n    return self.proj(x) + 1\n\nfor i in range(10):\n    print(i)\n",
    "In 2024 there were 1234567 tokens, 3.14159 radians and 42 answers.",
    "Attention is all you need; streaming heads keep sinks and a recent window.",
    "int main() { std::vector<int> v{1, 2, 3}; return v.size(); }",
    "Hello world! Hello there. HELLO AGAIN... hello, hello, hello.",
    "你好，世界。今天天气很好。 Ünïcödé façade café naïve résumé.",
    "Emoji: 😀 👍 — dashes and “quotes” and ``quoted'' text.",
    "    indented\n\t\ttabs\n\n\nnewlines   and   spaces  ",
    "translate English to German: The house is wonderful. summarize: studies have shown that",
] * 20

PIECES = ["hello", "Hello", " world", "the", " The", "quick", "fox", "I'm", "DON'T", "they'll", "12345", "3.14",
          "0", "007", "1,000,000", " 42", "x=1", "def f(a, b):", "\n", "\n\n", "\t", " ", "  ", "   ", "    return x",
          "{}", "[]", "()", "<=", "!=", "->", "::", "//", "#", "😀", "👍🏽", "🚀", "🇫🇷", "你好", "世界", "天气", "龍",
          "日本語", "한국어", "e\u0301", "a\u0308", "n\u0303", "\u0301", "ñ", "ß", "Ω", "€", "—", "…", "'s", '"',
          "café", " naïve", "\r\n", " \n ", "  \n", "abc123def", "ABC", "mixedCASE", "snake_case", ".", ",", "!?",
          "``", "''", "``x''", SP, SP + "hello", "<0x41>", "<unk>x", "\u00a0", "\u3000", "\u200b", "Ⅻ", "½",
          "\U0001F600\u200d", "translate", "summarize:",
          # what the nmt_nfkc table maps: full-width and half-width forms, ligatures, compatibility
          # characters, controls, zero-width characters, and clusters of under and over 6 bytes
          "ｈｅｌｌｏ", "ＡＢＣ１２３", "ﬁ", "ﬀi", "①", "㍿", "Å", "ｶﾞ", "\u1100\u1161", "a\u0308\u0301", "\u0915\u094d",
          "x\u200dy", "\ufeff", "\x01", "\x7f", "\u2028", "\u3000x", "™", "ｱｲｳ", "e\u0301\u0301"]
INVALID = [b"\x80", b"\xff", b"\xc0", b"\xe4\xb8", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xfe\xfe", b"\xc3"]
PLACEHOLDER = "\ue000"  # private use: never in the vocabulary

SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]


def training_text():
    """The corpus and sentences of its words and the test pieces in random order: enough distinct
    substrings for a vocabulary of several hundred pieces with close scores."""
    rng = random.Random(7)
    words = " ".join(CORPUS[:10]).split() + [p.strip() for p in PIECES if p.strip()]
    return CORPUS + [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(600)]


def train():
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=700, special_tokens=SPECIALS, unk_token="<unk>",
                                      max_piece_length=8, show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    return json.loads(tok.to_str())


def nmt_nfkc_charsmap():
    """SentencePiece's compiled nmt_nfkc table, from a model it trains (its normalizer_spec)."""
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=120,
                                             model_type="unigram", normalization_rule_name="nmt_nfkc", minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(out.getvalue())
    assert proto.normalizer_spec.name == "nmt_nfkc"
    return base64.b64encode(proto.normalizer_spec.precompiled_charsmap).decode()


def metaspace(scheme, split=True):
    return {"type": "Metaspace", "replacement": SP, "prepend_scheme": scheme, "split": split}


def replace(pattern, content, regex=False):
    return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern}, "content": content}


def template(tj, single, token):
    tid = [i for i, (p, _) in enumerate(tj["model"]["vocab"]) if p == token][0]
    return json.loads(processors.TemplateProcessing(single=single, special_tokens=[(token, tid)]).__getstate__())


def variant(base, name):
    tj = json.loads(json.dumps(base))
    m = tj["model"]
    byte_fallback = name in ("legacy", "first")
    if byte_fallback:
        # The byte pieces go after the specials, with score 0 as in converted SentencePiece models.
        pieces = m["vocab"]
        n_special = len(SPECIALS)
        m["vocab"] = pieces[:n_special] + [["<0x%02X>" % b, 0.0] for b in range(256)] + pieces[n_special:]
        m["unk_id"] = [p for p, _ in m["vocab"]].index("<unk>")
        ids = {p: i for i, (p, _) in enumerate(m["vocab"])}
        for a in tj["added_tokens"]:
            a["id"] = ids[a["content"]]
    m["byte_fallback"] = byte_fallback
    if name == "t5":
        tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": False,
                                                                 "strip_right": True},
                                                                replace(" {2,}", SP, regex=True)]}
        tj["pre_tokenizer"] = metaspace("always")
        tj["decoder"] = metaspace("always")
        tj["post_processor"] = template(tj, "$A </s>", "</s>")
    elif name == "legacy":
        tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SP},
                                                                replace(" ", SP)]}
        tj["pre_tokenizer"] = None
        tj["decoder"] = {"type": "Sequence", "decoders": [replace(SP, " "), {"type": "ByteFallback"},
                                                          {"type": "Fuse"},
                                                          {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
        tj["post_processor"] = template(tj, "<s> $A", "<s>")
    elif name == "first":
        tj["normalizer"] = {"type": "Sequence", "normalizers": [replace("``", '"'), replace("''", '"'),
                                                                {"type": "Strip", "strip_left": True,
                                                                 "strip_right": True}]}
        tj["pre_tokenizer"] = metaspace("first", split=False)
        tj["decoder"] = {"type": "Sequence", "decoders": [metaspace("first", split=False), {"type": "ByteFallback"},
                                                          {"type": "Fuse"}]}
        tj["post_processor"] = None
        tj["added_tokens"].append({"id": len(m["vocab"]), "content": "<tool>", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": False})
    elif name == "nfkc":
        tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Precompiled",
                                                                 "precompiled_charsmap": nmt_nfkc_charsmap()},
                                                                replace(" {2,}", " ", regex=True)]}
        tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": SP, "add_prefix_space": True}
        tj["decoder"] = {"type": "Metaspace", "replacement": SP, "add_prefix_space": True}
        tj["post_processor"] = template(tj, "$A </s>", "</s>")
    elif name == "never":
        tj["normalizer"] = None
        tj["pre_tokenizer"] = metaspace("never")
        tj["decoder"] = metaspace("never")
        tj["post_processor"] = None
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
    out += ["", " ", "  ", "\n", "a", " a", "a ", "0123456789", SP, SP + SP, " " + SP, " ".join(CORPUS[:10]),
            "龍龍龍 🚀🚀", "x  y   z    w", "``a''", " </s> a", "</s>", "a</s>b"]
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
        cases.append({"text": s, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    with_specials = [{"text": s, "ids": tok.encode(s, add_special_tokens=True).ids} for s in strings(rng, 20, added)]
    vocab = {p: i for i, (p, _) in enumerate(tj["model"]["vocab"])}
    ph = [vocab.get("<0x%02X>" % b) for b in PLACEHOLDER.encode()]
    invalid = []
    for i in range(80):
        parts = [rng.choice(PIECES).encode() for _ in range(rng.randint(0, 4))]
        bad = rng.choice(INVALID)
        parts.insert(rng.randint(0, len(parts)), bad)
        raw = b"".join(parts)
        esc = raw.decode("utf-8", errors="surrogateescape")
        bad_bytes = [ord(c) - 0xdc00 for c in esc if 0xdc80 <= ord(c) <= 0xdcff]
        marked = "".join(PLACEHOLDER if 0xdc80 <= ord(c) <= 0xdcff else c for c in esc)
        hf = tok.encode(marked, add_special_tokens=False).ids
        if tj["model"]["byte_fallback"]:  # each placeholder's three byte tokens become the invalid byte's one
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
            # HF's decode with each placeholder read back as its byte.
            dec = tok.decode(hf, skip_special_tokens=False).encode()
            for bb in bad_bytes:
                dec = dec.replace(PLACEHOLDER.encode(), bytes([bb]), 1)
        else:
            want = hf
            dec = tok.decode(hf, skip_special_tokens=False).encode()
        invalid.append({"hex": raw.hex(), "ids": want, "decoded_hex": dec.hex()})
    ref = {"tokenizers": tokenizers.__version__, "cases": cases, "cases_with_specials": with_specials,
           "invalid_utf8": invalid}
    with open(os.path.join(OUT, name + ".json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
    unk = sum(c["ids"].count(tj["model"]["unk_id"]) for c in cases)
    print(name, len(cases), "strings,", sum(len(c["ids"]) for c in cases), "ids,", unk, "unk,", len(invalid),
          "invalid")


def main():
    os.makedirs(OUT, exist_ok=True)
    base = train()
    for i, name in enumerate(["t5", "legacy", "first", "nfkc", "never"]):
        make(base, name, 2000, 200 + i)


if __name__ == "__main__":
    main()
