#!/usr/bin/env bash
# ctest cli_install: `cmake --install` puts a working duo in PREFIX/bin, with the LICENSE
# (Apache-2.0) and README in PREFIX/share/doc/duo.
set -euo pipefail
build=${1:?usage: install_test.sh BUILD_DIR}
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cmake --install "$build" --prefix "$prefix" > /dev/null
[ -x "$prefix/bin/duo" ] || fail "no bin/duo"
version=$(sed -n 's/^project(duo VERSION \([^ ]*\).*/\1/p' "$(dirname "$0")/../../CMakeLists.txt")
[ "$("$prefix/bin/duo" --version | head -n 1)" = "duo $version" ] || fail "installed duo --version"  # line 2: the SIMD level
grep -q "Apache License" "$prefix/share/doc/duo/LICENSE" || fail "no Apache-2.0 LICENSE"
grep -q "Version 2.0, January 2004" "$prefix/share/doc/duo/LICENSE" || fail "LICENSE is not Apache-2.0"
[ -f "$prefix/share/doc/duo/README.md" ] || fail "no README"
echo "install test passed"
