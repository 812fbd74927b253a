#!/usr/bin/env bash
# A/B of a kernel change on the GPU machine inside one command: builds a base tree (an archive of
# the base commit, carried) and the working tree side by side, runs the CUDA tests that touch
# attention and the KV cache on the new build, then alternating decode benches (new, base, new,
# base: the same machine, so the ratio is fair whatever the card), an Nsight Compute profile of
# one q4 and one q8 decode-attention launch of each, and the longest-context search of the new
# build, each step only while the deadline leaves room. Results go to $OUT/ab.tgz (also when the
# command is cut short), the step log to stdout.
#
#   here:   git archive --prefix=base/ BASE_COMMIT | gzip > .carry/base.tgz
#   device: DEADLINE=500 bash dev/gpu_kernel_ab.sh        (carry .deb and .carry; timeout_s > DEADLINE + 60)
#
# DEADLINE: seconds the script may use (default 500). BASE_TGZ: the base archive (default
# .carry/base.tgz). TESTS: the gtest filter of the CUDA tests run on the new build.
set -u
R=/tmp/duo-ab; rm -rf "$R"; mkdir -p "$R"
T0=$SECONDS; DEADLINE=${DEADLINE:-500}
base_tgz=${BASE_TGZ:-.carry/base.tgz}
tests=${TESTS:-'*Quant*:*Decode*:*Prefill*:*KvCache*:*Batch*:*Attention*'}
left() { echo $((DEADLINE - (SECONDS - T0))); }
log() { echo "$(date +%T) +$((SECONDS - T0))s $*" | tee -a "$R/progress"; }
finish() { [ -n "${OUT:-}" ] && tar -C "$R" -czf "$OUT/ab.tgz" .; }
trap finish EXIT
[ -f "$base_tgz" ] || { log "no base archive $base_tgz"; exit 2; }
source dev/gpu_machine_env.sh > "$R/env.log" 2>&1
rm -rf /tmp/duo-ab-new /tmp/duo-ab-base && mkdir -p /tmp/duo-ab-new /tmp/duo-ab-base
tar --exclude=./.carry --exclude='./build*' -cf - . | tar -C /tmp/duo-ab-new -xf -
tar -xzf "$base_tgz" -C /tmp/duo-ab-base --strip-components=1
# The benches read tests/fixtures (the published patterns); the base archive may leave it out.
[ -d /tmp/duo-ab-base/tests/fixtures/patterns ] || { rm -rf /tmp/duo-ab-base/tests/fixtures; ln -s /tmp/duo-ab-new/tests/fixtures /tmp/duo-ab-base/tests/fixtures; }
cfg() { cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDUO_CUDA=ON -DDUO_SERVE=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90a > "$R/cfg_$(basename "$2").log" 2>&1; }
cfg /tmp/duo-ab-new /tmp/duo-ab-bn & cfg /tmp/duo-ab-base /tmp/duo-ab-bb & wait
cmake --build /tmp/duo-ab-bn -j16 --target duo_cli duo_cuda_tests > "$R/build_new.log" 2>&1
log "built new rc=$?"
# The base builds while the new one is tested (the tests do not time anything).
(cmake --build /tmp/duo-ab-bb -j12 --target duo_cli > "$R/build_base.log" 2>&1; echo $? > "$R/build_base.rc") &
base_pid=$!
nvidia-smi > "$R/nvidia_smi.txt" 2>&1
command -v ncu > /dev/null || PATH=$PATH:$(ls -d /opt/nvidia/nsight-compute/*/ 2>/dev/null | tail -1)
if [ "$(left)" -gt 60 ]; then
  timeout 60 /tmp/duo-ab-bn/duo_cuda_tests --gtest_brief=1 --gtest_filter="$tests" > "$R/cuda_tests.txt" 2>&1
  log "tests rc=$? ($(grep -c '^\[  FAILED' "$R/cuda_tests.txt") failed lines)"
fi
bin_of() { [ "$1" = base ] && echo /tmp/duo-ab-bb/duo || echo /tmp/duo-ab-bn/duo; }  # new|base
B=(bench --device cuda --synthetic llama3-8b --gpu-weights int8 --modes full,duo50 --each-kv-type
   --kv-types bf16,q8,q4 --prefill 0 --decode 131072 --decode-steps 16)
bench() {  # new|base round
  [ "$(left)" -gt 60 ] || return 0
  if [ "$1" = base ]; then  # (waits for the base build only while the deadline allows it)
    [ -f "$R/build_base.rc" ] || [ "$(left)" -gt 150 ] || return 0
    wait $base_pid 2>/dev/null
    [ "$(cat "$R/build_base.rc" 2>/dev/null)" = 0 ] || return 0
  fi
  timeout $(( $(left) - 20 )) "$(bin_of "$1")" "${B[@]}" --out "$R/bench_$1_r$2.json" > "$R/bench_$1_r$2.txt" 2>&1
  log "bench $1 r$2 rc=$?"
}
ncu1() {  # new|base kv-type: one decode-attention launch at 128K, hardware counters
  [ "$(left)" -gt 80 ] || return 0
  timeout 75 ncu --clock-control none -k regex:decode_mma_kernel --launch-skip 8 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --section LaunchStats --section InstructionStats --section SchedulerStats \
    "$(bin_of "$1")" bench --device cuda --synthetic llama3-8b --gpu-weights int8 --modes full --each-kv-type \
    --kv-types "$2" --prefill 0 --decode 131072 --decode-steps 2 > "$R/ncu_$1_$2.txt" 2>&1
  log "ncu $1 $2 rc=$?"
}
bench new 1; bench base 1
ncu1 new q4; ncu1 base q4
bench new 2; bench base 2
ncu1 new q8; ncu1 base q8
if [ "$(left)" -gt 100 ]; then
  timeout $(( $(left) - 15 )) /tmp/duo-ab-bn/duo bench --device cuda --synthetic llama3-8b --gpu-weights int8 \
    --modes duo50 --find-max-context --kv-types q4 > "$R/maxctx_new.txt" 2>&1
  log "maxctx new rc=$?"
fi
log done
