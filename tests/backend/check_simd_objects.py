#!/usr/bin/env python3
"""Checks that no AVX instruction can run before the SIMD level check (src/backend/cpu/simd_level.h).

Usage: check_simd_objects.py LIBDUO_BACKEND_CPU.a [--portable]

1. The files compiled with AVX target flags (*_avx2.cpp, *_avx512.cpp) define no weak symbol
   (inline function, template instantiation) whose code has an AVX instruction: the linker keeps
   one copy of a weak symbol for the whole program, and if it kept such a copy, generic code
   calling that function would run AVX code on any CPU (the one-definition trap).
2. With --portable (a -DDUO_NATIVE=OFF build): no other file of the library has any AVX
   instruction at all, so only the dispatched kernels can run one.
Needs binutils (nm, objdump). Exit status 0 when both hold.
"""
import re
import subprocess
import sys
import tempfile
import os

# VEX/EVEX-encoded instructions all have a 'v' mnemonic; AVX-512 mask instructions start with k.
AVX = re.compile(r"^\s*[0-9a-f]+:\s+(v[a-z0-9]+|k(?:mov|and|or|xor|not|shift|test|unpck|add)[a-z]*)\b|%[yz]mm|%k[1-7]\b")
ISA_FILE = re.compile(r"_(avx2|avx512)\.cpp\.o$")


def functions_with_avx(obj):
    """Symbol (mangled) -> first AVX instruction line, for every function of obj using AVX."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True,
                         check=True).stdout
    found, current = {}, None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            current = m.group(1)
        elif current and current not in found and AVX.search(line):
            found[current] = line.strip()
    return found


def weak_symbols(obj):
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    return {parts[2] for parts in (l.split() for l in out.splitlines()) if len(parts) == 3 and parts[1] in "WVu"}


def demangle(name):
    return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()


def main():
    lib, portable = sys.argv[1], "--portable" in sys.argv[2:]
    errors, isa_objs, generic_objs = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        members = subprocess.run(["ar", "t", lib], capture_output=True, text=True, check=True).stdout.split()
        subprocess.run(["ar", "x", os.path.abspath(lib)], cwd=tmp, check=True)
        for member in members:
            obj = os.path.join(tmp, member)
            if ISA_FILE.search(member):
                isa_objs += 1
                avx = functions_with_avx(obj)
                for sym in sorted(weak_symbols(obj) & avx.keys()):
                    errors.append(f"{member}: weak symbol with AVX code, the linker may keep it for generic callers: "
                                  f"{demangle(sym)} ({avx[sym]})")
            elif portable:
                generic_objs += 1
                for sym, line in sorted(functions_with_avx(obj).items()):
                    errors.append(f"{member}: AVX instruction outside the dispatched kernels: {demangle(sym)} ({line})")
    if isa_objs == 0:
        errors.append(f"{lib}: no *_avx2/*_avx512 object files")
    for e in errors:
        print(e)
    print(f"{isa_objs} instruction-set objects, {generic_objs} generic objects checked: "
          f"{'FAIL' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
