#!/usr/bin/env bash
# GPU-machine side of carrying both default models in pieces of up to ~58 MiB (one piece a command,
# commands back to back so the machine stays warm; a piece and the ~4 MiB tree must fit the 64 MiB
# a command carries). The pieces are `cat SmolLM2.gguf Qwen.gguf | split -b 58M -d -a 2` made on the
# development machine (or, with the argument `qwen`, pieces of Qwen alone: `split -b 58M -d -a 2
# Qwen.gguf`). Each call appends its piece(s); as soon as a model's bytes are complete it is cut
# out, checked against its sha256 and moved (atomically) into ~/.cache/duo/models, where tests and
# bench/gpu_suite.sh find it.
#   bash dev/device_receive_models.sh [both|qwen] [PIECE...]   # after each piece
# PIECE: the files to append (default: every file in ./.carry). Name each piece's own folder when
# every piece travels in a folder of its own (.carry/q00, .carry/q01, ...: calls that need no
# staging in between): an ignored folder carried by an earlier call can stay on the machine, so
# `.carry/*` could name it again. A piece already appended (by name) is not appended twice.
set -euo pipefail
acc=/tmp/duo-ferry/all.bin
dst=${DUO_MODELS:-$HOME/.cache/duo/models}
mkdir -p "$(dirname "$acc")" "$dst"
layout=${1:-both}
shift || true
pieces=("$@")
[ ${#pieces[@]} -gt 0 ] || pieces=(.carry/*)
for p in "${pieces[@]}"; do
  [ -f "$p" ] || { echo "ferry: no piece $p" >&2; exit 1; }
  grep -qxF "$p" "$acc.pieces" 2>/dev/null && { echo "ferry: $p was appended already"; continue; }
  cat "$p" >> "$acc"
  echo "$p" >> "$acc.pieces"
done
size=$(stat -c %s "$acc")
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
