#!/usr/bin/env bash
# ctest serve_e2e: end-to-end tests of `duo serve` on a loopback port (test_serve.py), with
# curl and the official openai Python client, pinned, installed into a virtual environment
# next to the duo binary (reused while the version matches).
#
#   tests/serve/run_e2e.sh build/duo
#
# Exit status 77 (ctest: skipped) when the default model was not fetched, unless
# DUO_REQUIRE_MODELS is set.
set -euo pipefail
duo="$(realpath "${1:?usage: run_e2e.sh path/to/duo}")"
here="$(cd "$(dirname "$0")" && pwd)"
venv="$(dirname "$duo")/serve-venv"
openai_version=1.109.1

if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$openai_version')" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "openai==$openai_version"
fi
exec "$venv/bin/python" "$here/test_serve.py" --duo "$duo"
