#!/usr/bin/env bash
# Source this on the GPU machine (Ubuntu 24.04, no network) before building duo there.
# That machine has the runtime libraries duo needs but not every -dev package: the missing ones
# travel as Debian .deb files in ./.deb (fetched here with `apt-get download libpcre2-dev
# libcpp-httplib-dev`, carried with the command) and are unpacked into /tmp/duo-deps.
#   source dev/gpu_machine_env.sh && cmake -S . -B build-gpu -G Ninja -DDUO_CUDA=ON ...
prefix=/tmp/duo-deps
if [ -d .deb ] && ls .deb/*.deb >/dev/null 2>&1; then
  mkdir -p "$prefix"
  for f in .deb/*.deb; do dpkg -x "$f" "$prefix"; done
  lib="$prefix/usr/lib/x86_64-linux-gnu"
  # The -dev symlinks point at versioned files that live in the system's /usr/lib, not in the prefix.
  for so in "$lib"/*.so; do
    [ -L "$so" ] || continue
    base=$(basename "$so")
    sys=$(ls /usr/lib/x86_64-linux-gnu/"$base".* 2>/dev/null | head -1)
    [ -n "$sys" ] && ln -sf "$sys" "$so"
  done
  # pkg-config files say prefix=/usr: rewrite them to the unpacked prefix.
  for pc in "$lib"/pkgconfig/*.pc; do
    [ -f "$pc" ] && sed -i "s#^prefix=/usr#prefix=$prefix/usr#" "$pc"
  done
  export PKG_CONFIG_PATH="$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export CPATH="$prefix/usr/include${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
fi
export PATH="/usr/local/cuda/bin:$PATH"
