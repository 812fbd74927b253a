#!/usr/bin/env bash
# ctest serve_e2e: end-to-end tests of `duo serve` on a loopback port (test_serve.py), with
# curl, the official openai Python client, LangChain (langchain-openai) and `jsonschema`, pinned,
# installed into a virtual environment next to the duo binary (reused while the list matches).
#
#   tests/serve/run_e2e.sh build/duo
#
# Exit status 77 (ctest: skipped) when the default model was not fetched, unless
# DUO_REQUIRE_MODELS is set.
set -euo pipefail
duo="$(realpath "${1:?usage: run_e2e.sh path/to/duo}")"
here="$(cd "$(dirname "$0")" && pwd)"
venv="$(dirname "$duo")/serve-venv"
# The clients and checkers the tests use, pinned; the venv is made again when this list changes.
packages="openai==1.109.1 langchain-openai==1.0.3 jsonschema==4.26.0"

if [ "$(cat "$venv/duo-packages" 2>/dev/null)" != "$packages" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086  # one word per package
  "$venv/bin/pip" install -q --disable-pip-version-check $packages
  echo "$packages" > "$venv/duo-packages"
fi
exec "$venv/bin/python" "$here/test_serve.py" --duo "$duo"
