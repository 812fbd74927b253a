#!/usr/bin/env bash
# Fuzzes for a bounded time: ./scripts/run_fuzz.sh [seconds per target, default 30].
# Configures build-fuzz with clang (libFuzzer + ASan + UBSan), builds the targets of
# tests/fuzz (gguf, tokenizer, chat, request, pattern, safetensors) and runs their `*_fuzz_run` ctest tests
# one after the other (the GGUF reader gets a third more time), each on a copy of its corpus
# in tests/fuzz/corpus (dev/make_fuzz_corpus.py writes it). The tokenizer and chat targets
# read the fetched models' vocabularies (scripts/fetch_models.py). Exits non-zero on any
# finding (crash, sanitizer report, leak, timeout, escaped exception); reproducers are left in
# build-fuzz/fuzz-findings/ (replay one with: build-fuzz/tests/fuzz/NAME_fuzz FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
build=${DUO_FUZZ_BUILD:-build-fuzz}
targets=(gguf_fuzz tokenizer_fuzz chat_fuzz request_fuzz pattern_fuzz safetensors_fuzz)
command -v clang++ >/dev/null || { echo "run_fuzz: clang++ not found (apt-get install clang libclang-rt-dev)" >&2; exit 2; }
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
CC=clang CXX=clang++ cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDUO_FUZZ=ON -DDUO_TESTS=OFF -DDUO_BENCH=OFF -DDUO_CUDA=OFF -DDUO_FUZZ_SECONDS="$secs" >/dev/null
cmake --build "$build" --target "${targets[@]}" -j "${DUO_JOBS:-2}"
rm -rf "$build/fuzz-findings"
if ctest --test-dir "$build/tests/fuzz" -R '_fuzz_run$' --output-on-failure; then
  echo "run_fuzz: ${targets[*]} ran ${secs}s each with no finding"
else
  echo "run_fuzz: FINDING (see output above); reproducers in $build/fuzz-findings:" >&2
  ls -l "$build/fuzz-findings" >&2 || true
  exit 1
fi
