#!/usr/bin/env bash
# Builds the GGUF fuzz target with clang (libFuzzer + ASan + UBSan) and runs it for a bounded
# time (seconds, default 60) on a copy of the seed corpus. Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
need=()
command -v clang++ >/dev/null || need+=(clang)
dpkg -s libclang-rt-14-dev >/dev/null 2>&1 || need+=(libclang-rt-14-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
cmake -S tests/fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$(nproc)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r tests/fuzz/corpus/gguf "$work/corpus"
mkdir -p "$work/artifacts"
./build-fuzz/gguf_fuzz -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
  -artifact_prefix="$work/artifacts/" -print_final_stats=1 "$work/corpus" 2>&1 | tail -15
if [ -n "$(ls -A "$work/artifacts")" ]; then
  echo "fuzz: findings in $work/artifacts:"; ls -l "$work/artifacts"
  mkdir -p build-fuzz/findings && cp "$work"/artifacts/* build-fuzz/findings/
  exit 1
fi
echo "fuzz: gguf_fuzz ran ${secs}s with no finding"
