#!/usr/bin/env bash
# GPU-machine side of carrying both default models in ~61 MiB pieces (one piece a command, in
# ./.carry, commands back to back so the machine stays warm). The pieces are
# `cat SmolLM2.gguf Qwen.gguf | split -b 61M` made on the development machine (or, with the
# argument `qwen`, pieces of Qwen alone: `split -b 61M Qwen.gguf`). Each call appends
# its piece; as soon as a model's bytes are complete it is cut out, checked against its sha256
# and moved (atomically) into ~/.cache/duo/models, where tests and bench/gpu_suite.sh find it.
#   bash scripts/device_receive_models.sh [both|qwen]     # after each piece
set -euo pipefail
acc=/tmp/duo-ferry/all.bin
dst=${DUO_MODELS:-$HOME/.cache/duo/models}
mkdir -p "$(dirname "$acc")" "$dst"
cat .carry/* >> "$acc"
size=$(stat -c %s "$acc")
layout=${1:-both}
smol_n=98362432
qwen_n=1117320768
[ "$layout" = qwen ] && smol_n=0
extract() {  # name, offset, bytes, sha256
  local out=$dst/$1
  [ -f "$out" ] && return 0
  dd if="$acc" of="$out.part" bs=4M iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none
  echo "$4  $out.part" | sha256sum -c --quiet - || { echo "$1: checksum mismatch" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"
  echo "received $1"
}
echo "ferry: $size of $((smol_n + qwen_n)) bytes"
if [ "$layout" = both ] && ((size >= smol_n)); then
  extract SmolLM2-135M-Instruct.Q4_1.gguf 0 $smol_n b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
fi
if ((size >= smol_n + qwen_n)); then
  extract Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf $smol_n $qwen_n \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
fi
