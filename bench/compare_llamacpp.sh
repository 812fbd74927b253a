#!/usr/bin/env bash
# Same-machine CPU speed comparison of duo against llama.cpp: pre-fill and decode tokens/s at the
# same thread count and prompt sizes, printed as a table of duo/llama.cpp ratios.
#
#   LLAMA_CPP_SRC=/path/to/llama.cpp bench/compare_llamacpp.sh [-m MODEL] [-t THREADS]
#                                                              [-p 512,4096] [-n 128] [-r 3]
#
# THIS SCRIPT NEVER DOWNLOADS CODE. llama.cpp is not vendored in duo and must never be committed.
# Bring a llama.cpp source tree yourself and point LLAMA_CPP_SRC at it (a git clone of
# ggml-org/llama.cpp, or the vendor/llama.cpp tree of the llama-cpp-python sdist from PyPI, which is
# a checkout of a recorded llama.cpp commit). It is built once, outside the duo tree:
#
#   LLAMA_CPP_SRC    llama.cpp source tree (only needed while llama-bench is not built yet)
#   LLAMA_CPP_BUILD  build directory (default /tmp/llama.cpp/build); reused if it has bin/llama-bench
#   DUO              duo binary (default ./build/duo)
#   FA               llama-bench flash-attention settings to compare against (default "0,1")
#   OUT              directory for the raw outputs (default: a new directory under /tmp)
#
# Measured, both sides:
#   pre-fill  duo: P random prompt tokens in one forward      llama.cpp: llama-bench ppP (depth 0)
#   decode    duo: N tokens decoded after the P-token prompt  llama.cpp: llama-bench tgN at depth P
#             (llama-bench -d P: the KV cache holds P tokens, as in duo); tgN at depth 0 is shown too.
# Both run niced at the same priority; run nothing else heavy meanwhile (2-core machines especially).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${HOME}/.cache/duo/models/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS=2
PROMPTS=512,4096
GEN=128
REPS=3
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while getopts "m:t:p:n:r:h" opt; do
  case "$opt" in
    m) MODEL="$OPTARG" ;;
    t) THREADS="$OPTARG" ;;
    p) PROMPTS="$OPTARG" ;;
    n) GEN="$OPTARG" ;;
    r) REPS="$OPTARG" ;;
    h) usage 0 ;;
    *) usage 2 ;;
  esac
done

BUILD="${LLAMA_CPP_BUILD:-/tmp/llama.cpp/build}"
DUO="${DUO:-./build/duo}"
FA="${FA:-0,1}"
OUT="${OUT:-$(mktemp -d /tmp/duo-vs-llamacpp.XXXXXX)}"
mkdir -p "$OUT"
die() { echo "compare_llamacpp: $*" >&2; exit 1; }

[ -f "$MODEL" ] || die "model not found: $MODEL (run scripts/fetch_models.py)"
[ -x "$DUO" ] || die "duo binary not found: $DUO (build duo first: cmake --build build)"

# (a) Build llama.cpp if needed: only the targets we run, no network features.
LLAMA_BENCH="$BUILD/bin/llama-bench"
if [ ! -x "$LLAMA_BENCH" ]; then
  SRC="${LLAMA_CPP_SRC:-}"
  if [ -z "$SRC" ] || [ ! -f "$SRC/CMakeLists.txt" ] || [ ! -d "$SRC/ggml" ]; then
    die "llama.cpp is not built in $BUILD and no llama.cpp source was found (LLAMA_CPP_SRC='${SRC}').
  This script does not download code. Get a llama.cpp source tree yourself (git clone of
  ggml-org/llama.cpp, or vendor/llama.cpp from the llama-cpp-python sdist) and set LLAMA_CPP_SRC."
  fi
  command -v cmake >/dev/null || die "cmake not found"
  command -v ninja >/dev/null || die "ninja not found"
  echo "compare_llamacpp: building llama.cpp from $SRC into $BUILD (takes a while)" >&2
  cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF >"$OUT/llama_cmake.log" 2>&1 || die "cmake failed, see $OUT/llama_cmake.log"
  nice -n 10 ninja -C "$BUILD" -j "$(nproc)" llama-bench >"$OUT/llama_build.log" 2>&1 ||
    die "llama.cpp build failed, see $OUT/llama_build.log"
fi
LLAMA_COMMIT=unknown
if [ -n "${LLAMA_CPP_SRC:-}" ]; then
  LLAMA_COMMIT=$(git -C "$LLAMA_CPP_SRC" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
fi

# (b) llama.cpp: pre-fill at depth 0, decode at depth P (and 0). Same threads, sizes, repetitions.
echo "compare_llamacpp: llama-bench (flash attention $FA), raw output in $OUT" >&2
nice -n 10 "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p "$PROMPTS" -n 0 -r "$REPS" -fa "$FA" -o json \
  >"$OUT/llama_pp.json" 2>"$OUT/llama_pp.log" || die "llama-bench failed, see $OUT/llama_pp.log"
nice -n 10 "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 0 -n "$GEN" -d "0,$PROMPTS" -r "$REPS" -fa "$FA" -o json \
  >"$OUT/llama_tg.json" 2>"$OUT/llama_tg.log" || die "llama-bench failed, see $OUT/llama_tg.log"

# (c) duo: one JSON object per prompt size.
echo "compare_llamacpp: duo bench" >&2
nice -n 10 "$DUO" bench -m "$MODEL" -t "$THREADS" -p "$PROMPTS" -n "$GEN" -r "$REPS" --json \
  >"$OUT/duo.jsonl" 2>"$OUT/duo.log" || die "duo bench failed, see $OUT/duo.log"

# (d) The table.
python3 - "$OUT" "$MODEL" "$THREADS" "$GEN" "$LLAMA_COMMIT" <<'PY'
import json, os, sys

out, model, threads, gen, commit = sys.argv[1:6]
def load_array(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)
lcpp = load_array("llama_pp.json") + load_array("llama_tg.json")
duo = []
with open(os.path.join(out, "duo.jsonl")) as f:
    for line in f:
        line = line.strip()
        if line.startswith("{"):
            duo.append(json.loads(line))

def fa_of(r):  # older llama-bench: bool; newer: int or "on"/"off"/"auto"
    v = r.get("flash_attn")
    return {True: "1", False: "0", 1: "1", 0: "0", -1: "auto", "on": "1", "off": "0"}.get(v, str(v))

def lookup(fa, n_prompt, n_gen, depth):
    for r in lcpp:
        if fa_of(r) == fa and r["n_prompt"] == n_prompt and r["n_gen"] == n_gen and r.get("n_depth", 0) == depth:
            return r["avg_ts"], r["stddev_ts"]
    return None, None

fas = sorted({fa_of(r) for r in lcpp})
print(f"model {os.path.basename(model)} | {threads} threads | duo {duo[0].get('simd', '?')} kernels | "
      f"llama.cpp {commit} ({lcpp[0].get('build_commit', '?')}, {lcpp[0].get('cpu_info', '?')})")
hdr = (f"{'prompt':>7} {'fa':>4} | {'duo pp':>9} {'lcpp pp':>15} {'duo/lcpp':>8} | "
       f"{'duo tg':>8} {'lcpp tg@P':>14} {'duo/lcpp':>8} | {'lcpp tg@0':>9}")
print(hdr)
print("-" * len(hdr))
def fmt(v, s):
    return f"{v:8.1f}±{s:<6.1f}" if v is not None else f"{'n/a':>15}"
for d in duo:
    P = int(d["prompt_tokens"])
    for fa in fas:
        pp, pps = lookup(fa, P, 0, 0)
        tg, tgs = lookup(fa, 0, int(gen), P)
        tg0, _ = lookup(fa, 0, int(gen), 0)
        rp = f"{d['prefill_tok_s'] / pp:8.2f}" if pp else f"{'n/a':>8}"
        rt = f"{d['decode_tok_s'] / tg:8.2f}" if tg else f"{'n/a':>8}"
        t0 = f"{tg0:9.1f}" if tg0 else f"{'n/a':>9}"
        print(f"{P:>7} {fa:>4} | {d['prefill_tok_s']:9.1f} {fmt(pp, pps)} {rp} | "
              f"{d['decode_tok_s']:8.1f} {fmt(tg, tgs)[:14]:>14} {rt} | {t0}")
print("\nratio > 1: duo faster. pp: pre-fill tokens/s of a P-token prompt; tg: decode tokens/s with P tokens "
      "in the KV cache (lcpp tg@P = llama-bench -d P). duo peak RSS MiB: "
      + ", ".join(f"{d['prompt_tokens']}: {d.get('peak_rss_mb', float('nan')):.0f}" for d in duo))
PY
echo "compare_llamacpp: raw outputs in $OUT" >&2
