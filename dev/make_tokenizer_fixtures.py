#!/usr/bin/env python3
"""Reference tokenizations and chat renderings for tests/tokenizer/*_test.cpp, produced by an
independent implementation (HF `tokenizers`, Rust) from the vocabularies of the two default GGUFs.

Run: HF_HUB_OFFLINE=1 /opt/refenv/bin/python dev/make_tokenizer_fixtures.py
(a venv made as in dev/make_tiny_model_fixtures.py does: pip install torch transformers gguf)
(tokenizers 0.23, transformers 5.x, gguf-py; models fetched by scripts/fetch_models.py).
Writes tests/fixtures/tokenizer/{smollm2,qwen2.5-coder-1.5b,pretokenize}.json.

Why the reference tokenizer is built by hand rather than taken from transformers' GGUF loader
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`): the loader does not reproduce the original
models' tokenizers exactly.
  * SmolLM2: the original tokenizer.json has pre_tokenizer
    Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)],
    the GGUF records it as pre "smollm", but transformers' converter builds a plain ByteLevel
    pre-tokenizer: every digit run is tokenized differently ("2024" -> one piece instead of four).
  * Qwen2: the converter's pre-tokenizer (Split with the Qwen2 regex, then ByteLevel(use_regex=False))
    is right, but the original tokenizer.json also has an NFC normalizer, which the converter drops.
So we build the reference with `tokenizers` directly: BPE model from the GGUF tokens + merges,
the original pre-tokenizer (and NFC normalizer for Qwen2), ByteLevel decoder, and the GGUF's
control (type 3) tokens as special added tokens and user-defined (type 4) tokens as normal added
tokens. The script prints how many strings transformers' GGUF loader gets differently, as a check
of the above. The C++ tokenizer does not implement NFC (neither does llama.cpp); all fixture
strings are NFC already (asserted) so that the comparison is about BPE and pre-tokenization.

For pre-tokenizer types without a model at hand ("gpt2", "llama-bpe") the Qwen2 vocabulary is
reused with those pre-tokenizers (BPE ignore_merges=True for Llama-3, as in its tokenizer.json) and
stored under "variants".

The split rules are never written here (and never copied from src/tokenizer/pretokenize.cpp):
they are the pre-tokenizers of the tokenizer.json that transformers' own converters write for
these tokenizers (Qwen2Converter; TikTokenConverter, whose default pattern is Llama-3's;
GPT2Converter, whose ByteLevel keeps GPT-2's regex inside `tokenizers`), and for SmolLM2 the
pre-tokenizer its tokenizer.json names, from `tokenizers`' built-in Digits and ByteLevel.

Chat renderings come from transformers' apply_chat_template (the Jinja template in the GGUF).
"""
import json
import os
import random
import unicodedata

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import GPT2Converter, Qwen2Converter, TikTokenConverter, bytes_to_unicode

MODELS = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tokenizer")



class _NoOriginal:
    """What the converters read of an original (slow) tokenizer that is not needed here."""
    add_prefix_space = False


# A placeholder vocabulary: the converters need one, the pre-tokenizer does not depend on it.
_VOCAB, _MERGES = {"a": 0, "b": 1, "ab": 2}, [("a", "b")]


def hf_pre_tokenizer(pre):
    """The pre-tokenizer of the tokenizer.json transformers writes for this tokenizer type."""
    if pre == "qwen2":
        return Qwen2Converter(_NoOriginal()).converted(vocab=_VOCAB, merges=_MERGES).pre_tokenizer
    if pre == "gpt2":
        return GPT2Converter(_NoOriginal()).converted(vocab=_VOCAB, merges=_MERGES).pre_tokenizer
    if pre == "llama-bpe":  # Llama-3 is a tiktoken tokenizer: the converter's default pattern is its
        conv = TikTokenConverter(vocab_file=None)
        conv.tokenizer = lambda: Tokenizer(models.BPE(vocab=_VOCAB, merges=_MERGES, ignore_merges=True))
        return conv.converted().pre_tokenizer
    if pre == "smollm":  # SmolLM2's tokenizer.json: Sequence[Digits(individual_digits), ByteLevel]
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    raise ValueError(pre)


HANDWRITTEN = [
    # empty, whitespace runs, tabs, newlines, CRLF
    "", " ", "  ", "   ", "\n", "\n\n", "\n\n\n\n", "\t", "\t\t", " \t \n ", "\r\n", "\r\n\r\n", "\r", " \r\n ",
    "a", "a ", " a", "a  b", "a   b", "a\n\nb", "a \n b", "a\t\tb", "a\r\nb\r\n", "end.  \n\n  next",
    "trailing spaces   ", "   leading spaces", "multiple\n\n\nnewlines\n", "crlf\r\nline\r\nend",
    "mixed \r\n\t \n whitespace", "    indented with spaces", "\t\ttabs\tand\ttext",
    # plain English, contractions, case
    "Hello world!", "Hello, world! How are you?", "The quick brown fox jumps over the lazy dog.",
    "I'm fine, you're great, they'll see, we've been, he'd go, it's OK, I'M LOUD, You'Re",
    "don't won't can't shouldn't y'all", "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE 'M 'LL 'D", "O'Neil's",
    "rock 'n' roll", "'quoted'", "it''s", "UPPER lower MiXeD", "It was the best of times, it was the worst of times.",
    "He said: \"Yes.\" She said: 'No.'", "Dr. Smith vs. Mr. Jones, e.g. etc. i.e.",
    # numbers and digit runs
    "The year 2024 had 365 days; pi is 3.14159.", "0", "7", "12", "123", "1234", "12345", " 12345", "x12345y",
    "1 2 3 4 5 6 7 8 9 0", "1234567890123456789", "3141592653589793238462643383279502884197169399375105820974944",
    "Phone: +1 (555) 123-4567", "$100,000.00 and 50%", "3.0e-5 0x1F 0b1010 1_000_000", "v1.2.3-rc4",
    "2024-01-15T10:30:00Z", "192.168.0.1:8080", "½ ¾ ⅓ ² ³ °C", "①②③ Ⅻ ٣٤٥ ४५६", "a1b2c3", "1st 2nd 3rd 4th",
    # accents, scripts, RTL, CJK, emoji
    "ÀÉÎÕÜ àéîõü çñß", "naïve café résumé", "Øresund Ærø Åland", "Straße", "Привет, мир! Как дела?",
    "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم", "English then עברית then English", "پارسی ۱۲۳",
    "你好，世界！今天天气很好。", "日本語のテキストです。カタカナ、ひらがな。", "한국어 텍스트", "ไทย ภาษา", "हिन्दी भाषा",
    "Tiếng Việt có dấu", "ქართული", "Հայերեն", "emoji 😀🎉👍🏽 and 🇫🇷 flags", "👨‍👩‍👧‍👦 family", "❤️ ✨ ☕",
    "🤖🤖🤖", "math: ∑ ∫ √ ∞ ≤ ≥ ≠ ±", "arrows → ← ↑ ↓ ⇒", "box ┌─┐│└┘", "musical 𝄞 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    # unusual whitespace and invisible characters
    "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "ideographic\u3000space", "em\u2003space",
    "line\u2028separator", "nel\u0085char", "bom\ufeffhere", "ogham\u1680space", "ﬁ ligature", "Ǆ ǅ ǆ",
    "\x00nul\x01ctl\x7f", "\x0bvt\x0cff",
    # code
    "def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) {\n\tsum += x[i];\n}",
    "#include <stdio.h>\nint main() { printf(\"hi\\n\"); }", "SELECT * FROM users WHERE id = 42;",
    "<div class=\"x\">text</div>", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "fn main() { let v: Vec<i32> = vec![1, 2]; }", "x = lambda y: y ** 2  # square",
    "template <typename T>\nstd::vector<T> f(const T& x) noexcept { return {x}; }\n",
    "const f = async (x) => { await fetch(`/api/${x}`); };", "func main() {\n\tfmt.Println(\"go\")\n}",
    "main :: IO ()\nmain = putStrLn \"hs\"", "#!/bin/bash\nfor f in *.txt; do echo \"$f\"; done 2>&1 | grep -v '^#'",
    "    if x:\n        pass\n    else:\n        raise ValueError('bad')\n", "a->b; c::d; e=>f; g!=h; i<=j; k>>=2;",
    "//comment\n/* block */\n# py\n-- sql", "\"\"\"docstring\"\"\"", "x+=1;y-=2;z*=3;w/=4",
    # punctuation runs
    "!!!???...,,,;;;:::", "((()))[[[]]]{{{}}}", "a-b_c.d/e\\f|g~h`i", "...\n\n", "!!\n", ")\r\n", "--- \n",
    "@user #hashtag http://example.com/path?q=1&r=2", "e-mail: someone@example.org", "<<<>>> ~~~ ^^^",
    # long words
    "supercalifragilisticexpialidocious", "antidisestablishmentarianism" * 3, "a" * 56,
    "ThisIsCamelCaseText andsnake_case_text and kebab-case-text", "x" * 1000,
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 5, "ab" * 300, "😀" * 50, "的" * 100,
    # special tokens inside text
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", "text <|im_end|> more text",
    "<|endoftext|>", "<|endoftext|><|endoftext|>", "no special <|im_start tag", "<|im_start|><|im_end|>",
    "<tool_call>call</tool_call>", "x<|im_end|>y", " <|im_start|> ", "<|im_start|>system\nbe nice<|im_end|>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>", "<repo_name>duo<file_sep>a.py",
    "<|im_end|>\n\n", "<|im_start|>", "<|IM_END|>", "<|im_end|", "<<|im_end|>>",
]


def random_strings(n, seed):
    rng = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n", "  \r\n",
             ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`", "éèàùçñöäüß", "αβγδλμπσω", "абвгдежзи", "的一是不了人我在有他",
             "😀😂🎉🔥", "'s 're 've 'll 'd 't ", "٠١٢٣ אבג ابت"]
    out = []
    for _ in range(n):
        k = rng.randint(1, 48)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(k)))
    return out


def read_gguf_vocab(path):
    r = GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    return strings("tokenizer.ggml.tokens"), types, strings("tokenizer.ggml.merges")


def build_reference(tokens, types, merges, pre, nfc=False, ignore_merges=False):
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], ignore_merges=ignore_merges)
    tok = Tokenizer(bpe)
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = hf_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    return tok


def encode(tok, s, parse_special):
    tok.encode_special_tokens = not parse_special
    try:
        return tok.encode(s, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = False


CHATS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello\nthere"},
     {"role": "assistant", "content": "Hi! 👋"}],
    [{"role": "system", "content": "Only a system prompt."}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "Write C++:\n```cpp\nint main() { return 0; }\n```\n  indented\ttab"}],
    [{"role": "user", "content": "日本語で答えて。"}, {"role": "assistant", "content": "はい、わかりました。"}],
    [{"role": "system", "content": "Multi\nline\n\nsystem."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
]


def make(key, gguf, pre, nfc, variants):
    path = os.path.join(MODELS, gguf)
    tokens, types, merges = read_gguf_vocab(path)
    ref = build_reference(tokens, types, merges, pre, nfc=nfc)
    strings = HANDWRITTEN + random_strings(220, 7)
    for s in strings:
        assert unicodedata.is_normalized("NFC", s), f"fixture string is not NFC: {s!r}"

    # Cross-check: transformers' GGUF loader (see the docstring for why it is not the reference).
    hf = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf)
    n_diff = sum(hf.encode(s, add_special_tokens=False) != encode(ref, s, True) for s in strings)
    print(f"{key}: transformers' GGUF loader differs from the reference on {n_diff}/{len(strings)} strings")

    var_refs = {name: build_reference(tokens, types, merges, p, ignore_merges=im) for name, p, im in variants}
    cases = []
    n_plain = 0
    for s in strings:
        ids = encode(ref, s, True)
        case = {"text": s, "ids": ids}
        plain = encode(ref, s, False)
        if plain != ids:
            case["ids_no_special"] = plain
            n_plain += 1
        dec = ref.decode(ids, skip_special_tokens=False)
        if dec != s:
            case["decoded"] = dec
        for name, vt in var_refs.items():
            vids = encode(vt, s, True)
            if vids != ids:
                case.setdefault("variants", {})[name] = vids
        cases.append(case)
    chats = []
    for msgs in CHATS:
        for gen in (False, True):
            chats.append({"messages": msgs, "add_generation_prompt": gen,
                          "text": hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)})
    out = {"model": gguf, "pre": pre, "variants": [v[0] for v in variants], "cases": cases, "chats": chats}
    with open(os.path.join(OUT, f"{key}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    n_var = sum("variants" in c for c in cases)
    print(f"{key}: {len(cases)} strings ({n_plain} differ with parse_special off, {n_var} differ under a variant "
          f"pre-tokenizer), {len(chats)} chat renderings")


def make_pretokenize():
    """Raw pieces of every fixture string under each pre-tokenizer type: the split alone
    (Oniguruma in `tokenizers`, PCRE2 in duo), the byte-level mapping undone. This checks the
    regexes directly, also where a vocabulary would hide a difference (neither vocabulary has
    multi-digit tokens, so Llama-3's \p{N}{1,3} gives the same ids as Qwen2's \p{N})."""
    # Byte-level pieces back to text: every pre-tokenizer above ends in ByteLevel, which maps the
    # bytes of each piece to printable characters.
    to_byte = {c: b for b, c in bytes_to_unicode().items()}

    def text(piece):
        return bytes(to_byte[c] for c in piece).decode("utf-8")

    pres = {name: hf_pre_tokenizer(name) for name in ("gpt2", "llama-bpe", "qwen2", "smollm")}
    strings = HANDWRITTEN + random_strings(220, 7)
    pieces = {name: [[text(p) for p, _ in pt.pre_tokenize_str(s)] for s in strings] for name, pt in pres.items()}
    for name in pieces:
        for s, ps in zip(strings, pieces[name]):
            assert "".join(ps) == s, (name, s, ps)
    with open(os.path.join(OUT, "pretokenize.json"), "w", encoding="utf-8") as f:
        json.dump({"strings": strings, "pieces": pieces}, f, ensure_ascii=False, separators=(",", ":"))
    print(f"pretokenize: {len(strings)} strings x {len(pieces)} pre-tokenizers")


def main():
    os.makedirs(OUT, exist_ok=True)
    make_pretokenize()
    make("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm", False, [])
    make("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", "qwen2", True,
         [("gpt2", "gpt2", False), ("llama-bpe", "llama-bpe", True)])


if __name__ == "__main__":
    main()
