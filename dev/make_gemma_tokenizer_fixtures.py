#!/usr/bin/env python3
"""Reference tokenizations of the Gemma-3-270M GGUF's vocabulary (262K SentencePiece BPE pieces
with byte fallback) for tests/tokenizer/gemma_tokenizer_test.cpp, from Google's `sentencepiece`
library: an implementation independent of ours and of llama.cpp.

The GGUF carries what SentencePiece's model file carries (pieces, scores, piece types) but not the
file itself, so a ModelProto is rebuilt from it: BPE, byte fallback, Gemma's normalizer (identity,
no dummy prefix, whitespace kept and escaped as U+2581), <unk> as the unknown piece, control (type
3), user-defined (4) and byte (6) pieces as such. One respelling: llama.cpp's converter writes the
user-defined runs of spaces ("▁▁" .. in tokenizer.model) as real spaces; SentencePiece matches
user-defined pieces after escaping, so they get their U+2581 spelling back (transformers' GGUF
loader does the same). SentencePiece never reads control pieces out of text, while duo (as llama.cpp
and HF `tokenizers`) does with parse_special: "ids" splits the text at control-piece strings
(leftmost, longest) and encodes the parts with SentencePiece; "ids_no_special" is SentencePiece on
the whole text.

Not in the fixture, a known difference: a literal U+2581 in the text beside a space or another
U+2581 ("▁ x", "▁▁▁x"). SentencePiece cannot tell it from an escaped space, so it can begin one
of the user-defined runs of spaces; duo (as llama.cpp, whose GGUF spells those runs with real
spaces) matches user-defined pieces in the raw text, so there it is an ordinary "▁" piece.

As a cross-check (not the reference) the script prints how many strings transformers' GGUF loader
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, merges rebuilt from the vocabulary order)
tokenizes differently, and lists a few.

Run: HF_HUB_OFFLINE=1 PYTHONPATH=<dir with sentencepiece> /opt/refenv/bin/python \
         dev/make_gemma_tokenizer_fixtures.py
(sentencepiece 0.2 with protobuf, gguf-py, transformers 5.x; the model from
scripts/fetch_models.py gemma). Writes tests/fixtures/tokenizer/gemma3-270m.json.
"""
import json
import os
import sys

import sentencepiece as spm
from gguf import GGUFReader
from sentencepiece import sentencepiece_model_pb2 as pb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tokenizer_fixtures import HANDWRITTEN, random_strings  # noqa: E402  (the shared strings)

MODELS = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
GGUF = "gemma-3-270m-q4_k_m.gguf"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tokenizer")

# What Gemma's vocabulary has and the shared strings do not exercise: its control and
# user-defined pieces (turn markers, runs of newlines, spaces and tabs, HTML tags), and text
# around them.
GEMMA_STRINGS = [
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n", "<bos>", "<eos>", "<bos><bos>",
    "<pad><unk><mask>", "<unused0> <unused6241>", "x<end_of_turn>y", "<start_of_turn", "<START_OF_TURN>",
    "<<start_of_turn>>", "[multimodal]", "see [multimodal] here", "<start_of_image><end_of_image>",
    "\n" * 31, "\n" * 32, "\n" * 45, " " * 31, " " * 32, " " * 40, "\t" * 31, "\t" * 33, "a" + " " * 7 + "b",
    "x\n\n\n\ny", " \n \n ", "\t \t\n", "  leading two", "trailing two  ", " one", "one ",
    "<table><tr><td>1</td><td>2</td></tr></table>", "<h1>Title</h1>\n<p>para</p>", "<b>bold</b> <i>it</i>",
    "<div class=\"a\">x</div>", "<strong>", "</code>", "<a href=\"/\">link</a>", "<li>item</li><li>two</li>",
    "▁", "a▁b", "byte \x01\x02\x03 controls", "\u0301 combining at start",
    "e\u0301 a\u0308 n\u0303 (decomposed)", "Z\u0351\u0352\u0353algo", "Ǆungla", "\U0001f9d1\u200d\U0001f4bb coder",
    "\U000e0041 tag char", "\ue000 private use", "\U0010ffff last code point", "𝕏𝕐𝕫",
    "def f(x):\n\treturn x  # tab\n", "    four\n        eight\n", "a\u00a0b\u2009c\u202fd",
]


def read_vocab(path):
    r = GGUFReader(path)
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    f = r.fields["tokenizer.ggml.scores"]
    scores = [float(f.parts[i][0]) for i in f.data]
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    unk = int(r.fields["tokenizer.ggml.unknown_token_id"].contents())
    return tokens, scores, types, unk


def build_sentencepiece(tokens, scores, types, unk):
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.unk_id = unk
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    kinds = {1: pb.ModelProto.SentencePiece.NORMAL, 3: pb.ModelProto.SentencePiece.CONTROL,
             4: pb.ModelProto.SentencePiece.USER_DEFINED, 6: pb.ModelProto.SentencePiece.BYTE}
    for i, (t, s, ty) in enumerate(zip(tokens, scores, types)):
        p = m.pieces.add()
        p.piece = "\u2581" * len(t) if ty == 4 and len(t) > 1 and set(t) == {" "} else t
        p.score = s
        p.type = pb.ModelProto.SentencePiece.UNKNOWN if i == unk else kinds[ty]
    return spm.SentencePieceProcessor(model_proto=m.SerializeToString())


def split_control(text, controls):
    """The text cut at control-piece strings, leftmost first, the longest at a position."""
    out, plain, i = [], [], 0
    by_first = {}
    for t, tid in controls.items():
        by_first.setdefault(t[0], []).append((t, tid))
    for lst in by_first.values():
        lst.sort(key=lambda x: -len(x[0]))
    while i < len(text):
        hit = next(((t, tid) for t, tid in by_first.get(text[i], []) if text.startswith(t, i)), None)
        if hit:
            if plain:
                out.append("".join(plain))
                plain = []
            out.append(hit[1])
            i += len(hit[0])
        else:
            plain.append(text[i])
            i += 1
    if plain:
        out.append("".join(plain))
    return out


def main():
    tokens, scores, types, unk = read_vocab(os.path.join(MODELS, GGUF))
    sp = build_sentencepiece(tokens, scores, types, unk)
    controls = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3}

    def encode(s, parse_special):
        if not parse_special:
            return sp.encode(s)
        ids = []
        for part in split_control(s, controls):
            ids += [part] if isinstance(part, int) else sp.encode(part)
        return ids

    def decode(ids):  # control pieces as their text, as duo's decode and HF's with specials kept
        out, run = [], []
        for i in ids:
            if types[i] == 3:
                out.append(sp.decode(run))
                out.append(tokens[i])
                run = []
            else:
                run.append(i)
        out.append(sp.decode(run))
        return "".join(out)

    strings = HANDWRITTEN + GEMMA_STRINGS + random_strings(220, 7) + random_strings(60, 18)
    cases, n_plain, n_dec = [], 0, 0
    for s in strings:
        ids = encode(s, True)
        case = {"text": s, "ids": ids}
        plain = encode(s, False)
        if plain != ids:
            case["ids_no_special"] = plain
            n_plain += 1
        dec = decode(ids)
        if dec != s or decode(plain) != s:
            assert dec == decode(plain), s
            case["decoded"] = dec
            n_dec += 1
        cases.append(case)

    # Cross-check against transformers' GGUF loader.
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    diffs = [c for c in cases if hf.encode(c["text"], add_special_tokens=False) != c["ids"]]
    print(f"gemma3-270m: transformers' GGUF loader differs from sentencepiece on {len(diffs)}/{len(cases)} strings")
    for c in diffs[:8]:
        print(f"  {c['text'][:40]!r}: sentencepiece {c['ids'][:12]} transformers "
              f"{hf.encode(c['text'], add_special_tokens=False)[:12]}")

    out = {"model": GGUF, "pre": "default", "reference": f"sentencepiece {spm.__version__}", "variants": [],
           "cases": cases}
    with open(os.path.join(OUT, "gemma3-270m.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    print(f"gemma3-270m: {len(cases)} strings ({n_plain} differ with parse_special off, {n_dec} decode "
          f"differently from the text)")


if __name__ == "__main__":
    main()
