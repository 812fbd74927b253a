#!/usr/bin/env python3
"""Reference tokenizations and chat renderings from HF tokenizers/transformers (independent of
our C++ tokenizer), for both default models.

Run: HF_HUB_OFFLINE=1 /opt/refenv/bin/python scripts/make_tokenizer_fixtures.py
(transformers 5.x, tokenizers 0.23; models fetched by scripts/fetch_models.py).

The tokenizer is loaded from the GGUF by transformers. For SmolLM2 its GGUF converter uses a
plain ByteLevel pre-tokenizer, while the original SmolLM2 tokenizer.json splits every digit
first (Sequence[Digits(individual_digits=True), ByteLevel]); GGUF records this as pre-tokenizer
"smollm", so we restore the original pre-tokenizer before producing references. Qwen2's
converted pre-tokenizer (Split regex + ByteLevel) matches the original; the original also
applies NFC normalization, which the GGUF does not record: the strings below are NFC already.
"""
import json
import os
import random

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

MODELS = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer")

HANDWRITTEN = [
    "", " ", "  ", "\n", "\n\n", "\t", " \t \n ", "a", "Hello world!", "Hello, world! How are you?",
    "I'm fine, you're great, they'll see, we've been, he'd go, it's OK, I'M LOUD, You'Re",
    "don't won't can't shouldn't y'all", "The year 2024 had 365 days; pi is 3.14159.", "12345", " 12345",
    "1 2 3 4 5 6 7 8 9 0", "1234567890123456789", "Phone: +1 (555) 123-4567", "$100,000.00 and 50%",
    "ÀÉÎÕÜ àéîõü çñß", "naïve café résumé", "Привет, мир! Как дела?", "Γειά σου Κόσμε", "שלום עולם",
    "مرحبا بالعالم", "你好，世界！今天天气很好。", "日本語のテキストです。", "한국어 텍스트", "ไทย ภาษา",
    "emoji 😀🎉👍🏽 and 🇫🇷 flags", "👨‍👩‍👧‍👦 family", "math: ∑ ∫ √ ∞ ≤ ≥ ≠ ±", "arrows → ← ↑ ↓ ⇒",
    "def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) {\n\tsum += x[i];\n}",
    "#include <stdio.h>\nint main() { printf(\"hi\\n\"); }", "SELECT * FROM users WHERE id = 42;",
    "<div class=\"x\">text</div>", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "fn main() { let v: Vec<i32> = vec![1, 2]; }", "x = lambda y: y ** 2  # square",
    "    indented with spaces", "\t\ttabs\tand\ttext", "trailing spaces   ", "   leading spaces",
    "multiple\n\n\nnewlines\n", "crlf\r\nline\r\nend", "mixed \r\n\t \n whitespace",
    "!!!???...,,,;;;:::", "((()))[[[]]]{{{}}}", "a-b_c.d/e\\f|g~h`i", "@user #hashtag http://example.com/path?q=1&r=2",
    "e-mail: someone@example.org", "UPPER lower MiXeD", "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism" * 3, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ThisIsCamelCaseText andsnake_case_text and kebab-case-text", "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", "text <|im_end|> more text",
    "<|endoftext|>", "no special <|im_start tag", "<|im_start|><|im_end|>", "<tool_call>call</tool_call>",
    "It was the best of times, it was the worst of times.", "He said: \"Yes.\" She said: 'No.'",
    "Dr. Smith vs. Mr. Jones, e.g. etc. i.e.", "3.0e-5 0x1F 0b1010 1_000_000", "½ ¾ ⅓ ² ³ °C",
    "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "ﬁ ligature", "Ǆ ǅ ǆ",
]


def random_strings(n, seed):
    rng = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n",
             ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`", "éèàùçñöäüß", "αβγδλμπσω", "абвгдежзи", "的一是不了人我在有他",
             "😀😂🎉🔥", "'s 're 've 'll 'd 't "]
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        s = "".join(rng.choice(rng.choice(pools)) for _ in range(k))
        out.append(s)
    return out


def smollm_fix(tok):
    bt = tok.backend_tokenizer
    bt.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return tok


CHATS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello\nthere"},
     {"role": "assistant", "content": "Hi! 👋"}],
]


def main():
    os.makedirs(OUT, exist_ok=True)
    strings = HANDWRITTEN + random_strings(220, 7)
    for key, gguf, fix in (("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", smollm_fix),
                           ("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", None)):
        tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf)
        if fix:
            tok = fix(tok)
        cases = []
        for s in strings:
            ids = tok.encode(s, add_special_tokens=False)
            ids_plain = tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            case = {"text": s, "ids": ids}
            if ids_plain != ids:
                case["ids_no_special"] = ids_plain
            cases.append(case)
        chats = []
        for msgs in CHATS:
            for gen in (False, True):
                chats.append({"messages": msgs, "add_generation_prompt": gen,
                              "text": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)})
        with open(os.path.join(OUT, f"{key}.json"), "w", encoding="utf-8") as f:
            json.dump({"model": gguf, "cases": cases, "chats": chats}, f, ensure_ascii=False)
        print(key, len(cases), "strings,", len(chats), "chat renderings")


if __name__ == "__main__":
    main()
