#!/usr/bin/env python3
"""ctest cli_conventions: the everyday command-line conventions of `duo` (issue 19).

Without the model: --version, defaults in --help, "did you mean" for a misspelt subcommand or
option, advice for llama.cpp's -ngl, readable range errors, "not a GGUF file".
With SmolLM2 (exit 77, skipped, when it is missing unless DUO_REQUIRE_MODELS is set):
aliases -c/--ctx-size/--temperature, --no-display-prompt, the random default seed (printed and
reproducible), `duo tokenize` against the Hugging Face tokenizer's ids (tests/fixtures/tokenizer),
`duo logits` against greedy generation and `duo eval ppl -f` on a user's file.
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile

DUO = sys.argv[1]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TMP = tempfile.mkdtemp(prefix="duo_cli_")


def run(*args, ok=True, timeout=120):
    p = subprocess.run([DUO, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if ok and p.returncode != 0:
        sys.exit(f"FAIL: duo {' '.join(args)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    if not ok and p.returncode == 0:
        sys.exit(f"FAIL: duo {' '.join(args)} was accepted")
    if p.returncode < 0 or p.returncode >= 124:
        sys.exit(f"FAIL: duo {' '.join(args)}: exit status {p.returncode} (crash or abort)")
    return p


def expect(cond, what, detail=""):
    if not cond:
        sys.exit(f"FAIL: {what}\n{detail[-3000:]}")


def refused(msg, *args):
    p = run(*args, ok=False)
    out = p.stdout + p.stderr
    expect(msg in out, f"duo {' '.join(args)}: expected {msg!r}", out)
    # One readable message: no 309-digit bound, no screen of text.
    expect(max(len(line) for line in p.stderr.splitlines()) < 200, f"duo {' '.join(args)}: overlong line", out)
    expect(p.stdout == "", f"duo {' '.join(args)}: output before the error", out)
    return out


# --- without the model ---------------------------------------------------------------------
version = re.search(r"project\(duo VERSION (\S+)", open(os.path.join(ROOT, "CMakeLists.txt")).read()).group(1)
version_lines = run("--version").stdout.strip().split("\n")
expect(version_lines[0] == f"duo {version}", "--version", version_lines)
# The second line names the SIMD level in use; DUO_SIMD=scalar lowers it to the plain loops.
expect(len(version_lines) == 2 and re.match(r"CPU kernels: (scalar|avx2|avx512) ", version_lines[1]), "--version simd",
       version_lines)
scalar_version = subprocess.run([DUO, "--version"], capture_output=True, text=True, env={**os.environ, "DUO_SIMD": "scalar"})
expect(scalar_version.stdout.split("\n")[1].startswith("CPU kernels: scalar "), "DUO_SIMD=scalar", scalar_version.stdout)

# Every --help shows the defaults of options that have one.
for sub, default in [(["generate"], "-n,--max-tokens INT:NONNEGATIVE=128"), (["chat"], "=512"),
                     (["bench"], "=2"), (["eval", "ppl"], "--length INT:INT in [2 - 16777216]=4096"),
                     (["eval", "niah"], "=1024,2048,4096,8000"), (["logits"], "=10"), (["serve"], "=")]:
    h = run(*sub, "--help").stdout
    expect(default in h, f"duo {' '.join(sub)} --help shows no default {default!r}", h)
    expect("--chunk INT:POSITIVE=512" in h or sub[-1] in ("bench", "serve", "logits"),
           f"duo {' '.join(sub)} --help: --chunk default", h)

refused("unknown subcommand 'genrate' (did you mean 'generate'?)", "genrate")
refused("unknown subcommand 'pll' (did you mean 'ppl'?)", "eval", "pll")
refused("the subcommands are: demo, generate", "frobnicate")
refused("unknown option '--promt' (did you mean '--prompt'?)", "generate", "--promt", "hi")
refused("unknown option '--max-token' (did you mean '--max-tokens'?)", "chat", "--max-token", "5")
refused("-ngl: duo has no layer offload", "generate", "-p", "hi", "-ngl", "99")
refused("--n-gpu-layers: duo has no layer offload", "generate", "-p", "hi", "--n-gpu-layers=99")
refused("--max-tokens: expects a number (got 'abc')", "generate", "-p", "hi", "-n", "abc")
refused("--max-tokens: must be at least 0 (got -3)", "generate", "-p", "hi", "-n", "-3")
refused("--max-tokens: must be greater than 0 (got 0)", "chat", "-n", "0")
refused("--threads: must be at least 0 (got -1)", "bench", "-t", "-1")
# Bounded ranges keep CLI11's own message (already readable).
refused("--top-p: Value 2 not in range 0 to 1", "generate", "-p", "hi", "--top-p", "2")

for name, content in [("config.json", b'{"a": 1}\n'), ("tiny.json", b"{}")]:
    path = os.path.join(TMP, name)
    open(path, "wb").write(content)
    refused("not a GGUF file", "info", "-m", path)

# --- with the model ------------------------------------------------------------------------
model = os.path.join(os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models")),
                     "SmolLM2-135M-Instruct.Q4_1.gguf")
if not os.path.exists(model):
    if os.environ.get("DUO_REQUIRE_MODELS"):
        sys.exit(f"FAIL: model missing: {model}")
    print(f"model not fetched: {model}")
    sys.exit(77)
M = ["-m", model, "-t", "2"]


def stats(stderr):
    m = re.search(r"seed (\d+)", stderr)
    expect(m is not None, "no seed in the statistics line", stderr)
    return int(m.group(1))


# Aliases: -c/--ctx-size limit the context (a longer prompt is refused), --temperature samples.
long_prompt = "one two three four five six seven eight nine ten " * 3
for flag in ("-c", "--ctx-size", "--max-context"):
    refused("exceeds the context limit of 16 tokens (raise it with -c/--ctx-size)", "generate", *M, flag, "16", "-p", long_prompt)
run("generate", *M, "--temperature", "0.7", "-p", "hi", "-n", "2")

# --no-display-prompt: only the continuation on stdout.
prompt = "The capital of France is"
shown = run("generate", *M, "-p", prompt, "-n", "3", "--temp", "0").stdout
hidden = run("generate", *M, "-p", prompt, "-n", "3", "--temp", "0", "--no-display-prompt").stdout
expect(shown.startswith(prompt), "the prompt is echoed by default", shown)
expect(prompt not in hidden and shown == prompt + hidden, "--no-display-prompt", shown + "|" + hidden)

# A random default seed, printed; the printed seed reproduces the text.
sample = ["generate", *M, "-p", "Once upon a time", "-n", "12", "--temp", "1.0", "--no-display-prompt"]
a, b = run(*sample), run(*sample)
seed_a, seed_b = stats(a.stderr), stats(b.stderr)
expect(seed_a != seed_b, "the default seed is the same on every run", a.stderr + b.stderr)
again = run(*sample, "--seed", str(seed_a))
expect(again.stdout == a.stdout and stats(again.stderr) == seed_a, "--seed with the printed seed",
       a.stdout + "|" + again.stdout)

# duo tokenize against the Hugging Face tokenizer's ids (with and without special-token parsing).
fixture = json.load(open(os.path.join(ROOT, "tests/fixtures/tokenizer/smollm2.json")))
cases = [c for c in fixture["cases"] if c["text"]][::25] + [c for c in fixture["cases"] if "ids_no_special" in c]
for c in cases:
    ids = json.loads(run("tokenize", "-m", model, "--ids", "-p", c["text"]).stdout)
    expect(ids == c.get("ids_no_special", c["ids"]), f"tokenize {c['text']!r}", f"{ids} != {c}")
    if "ids_no_special" in c:
        ids = json.loads(run("tokenize", "-m", model, "--ids", "--parse-special", "-p", c["text"]).stdout)
        expect(ids == c["ids"], f"tokenize --parse-special {c['text']!r}", f"{ids} != {c['ids']}")
# The listing: one line per token, id and quoted piece; the pieces spell the text.
text = "Hello world,\n  it's me"
lines = run("tokenize", "-m", model, "-p", text).stdout.splitlines()
ids = json.loads(run("tokenize", "-m", model, "--ids", "-p", text).stdout)
expect([int(l.split()[0]) for l in lines] == ids, "tokenize listing ids", "\n".join(lines))
expect("".join(json.loads(l.split(None, 1)[1]) for l in lines) == text, "tokenize pieces", "\n".join(lines))

# duo logits: sorted log-probabilities whose top token is what greedy generation picks.
lg = json.loads(run("logits", *M, "-p", prompt, "-k", "5", "--json").stdout)
lps = [t["logprob"] for t in lg["top"]]
expect(len(lps) == 5 and lps == sorted(lps, reverse=True) and lps[0] <= 0, "logits order", str(lg))
expect(sum(math.exp(x) for x in lps) <= 1 + 1e-6, "logits: probabilities sum over 1", str(lg))
first = run("generate", *M, "-p", prompt, "-n", "1", "--temp", "0", "--no-display-prompt").stdout.rstrip("\n")
expect(first == lg["top"][0]["piece"], "logits top-1 vs greedy generate", f"{first!r} vs {lg['top'][0]}")
expect(lg["prompt_ids"] == json.loads(run("tokenize", "-m", model, "--ids", "-p", prompt).stdout), "logits ids")

# duo eval ppl -f: a text of the prompt and its most likely next token scores exactly the
# next-token log-probability that `duo logits` reports, averaged with the prompt's own tokens:
# check the file's token count and that scoring it equals scoring its prompt plus that token.
path = os.path.join(TMP, "mine.txt")
open(path, "w").write(prompt + lg["top"][0]["piece"])
file_ids = json.loads(run("tokenize", "-m", model, "--ids", "-f", path).stdout)
expect(file_ids == lg["prompt_ids"] + [lg["top"][0]["id"]], "file tokens", str(file_ids))
r_full = os.path.join(TMP, "full.json")
run("eval", "ppl", *M, "-f", path, "--json", r_full)
open(os.path.join(TMP, "head.txt"), "w").write(prompt)
r_head = os.path.join(TMP, "head.json")
run("eval", "ppl", *M, "-f", os.path.join(TMP, "head.txt"), "--json", r_head)
full, head = json.load(open(r_full)), json.load(open(r_head))
n = len(file_ids)
expect(full["scored"] == n - 1 and head["scored"] == n - 2, "ppl -f scored counts", f"{full} {head}")
last_nll = full["nll"] * full["scored"] - head["nll"] * head["scored"]
expect(abs(last_nll + lg["top"][0]["logprob"]) < 2e-3, "ppl -f vs logits", f"{last_nll} vs {lg['top'][0]}")
# --length takes the start of a longer file.
run("eval", "ppl", *M, "-f", path, "--length", "3", "--json", r_head)
expect(json.load(open(r_head))["scored"] == 2, "ppl -f --length")
print("cli conventions tests passed")
