#!/usr/bin/env python3
"""Checks the two things about #include lines that the layer include roots cannot:

- every quoted include in src/ names its folder ("kv/kv_codec.h", not "kv_codec.h"): the
  compiler looks next to the including file before the include path, so a bare name would
  reach a header of another layer that shares the folder (src/model, src/engine, src/io,
  src/backend/cuda hold files of two layers) without going through the layer roots;
- the public headers include/duo/ include only the standard library and duo/ headers (ctest's
  layering_public_headers_alone compiles them with include/ alone; this names the line).

Usage: check_includes.py <repository root>. Prints each offending line, exits 1 when any.
"""
import pathlib
import re
import sys

QUOTED = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def main() -> int:
    root = pathlib.Path(sys.argv[1])
    bad = []
    for path in sorted((root / "src").rglob("*")):
        if path.suffix not in {".h", ".cuh", ".cpp", ".cu"}:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = QUOTED.match(line)
            if m and "/" not in m.group(1):
                bad.append(f"{path.relative_to(root)}:{n}: include without its folder: {m.group(1)}")
    for path in sorted((root / "include").rglob("*.h")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = QUOTED.match(line)
            if m and not m.group(1).startswith("duo/"):
                bad.append(f"{path.relative_to(root)}:{n}: public header includes an internal one: {m.group(1)}")
    for b in bad:
        print(b)
    print(f"{len(bad)} include problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
