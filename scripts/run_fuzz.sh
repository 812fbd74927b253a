#!/usr/bin/env bash
# Fuzzes the GGUF reader for a bounded time: ./scripts/run_fuzz.sh [seconds, default 60].
# Configures build-fuzz with clang (libFuzzer + ASan + UBSan), builds gguf_fuzz and runs the
# `gguf_fuzz_run` ctest test on a copy of tests/fuzz/corpus/gguf. Exits non-zero on any finding
# (crash, sanitizer report, leak, timeout, escaped non-duo::Error exception); reproducers are
# left in build-fuzz/fuzz-findings/ (replay one with: build-fuzz/tests/fuzz/gguf_fuzz FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
build=${DUO_FUZZ_BUILD:-build-fuzz}
command -v clang++ >/dev/null || { echo "run_fuzz: clang++ not found (apt-get install clang libclang-rt-dev)" >&2; exit 2; }
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
CC=clang CXX=clang++ cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDUO_FUZZ=ON -DDUO_TESTS=OFF -DDUO_BENCH=OFF -DDUO_CUDA=OFF -DDUO_FUZZ_SECONDS="$secs" >/dev/null
cmake --build "$build" --target gguf_fuzz -j "${DUO_JOBS:-2}"
rm -rf "$build/fuzz-findings"
if ctest --test-dir "$build/tests/fuzz" -R '^gguf_fuzz_run$' --output-on-failure; then
  echo "run_fuzz: gguf_fuzz ran ${secs}s with no finding"
else
  echo "run_fuzz: FINDING (see output above); reproducers in $build/fuzz-findings:" >&2
  ls -l "$build/fuzz-findings" >&2 || true
  exit 1
fi
