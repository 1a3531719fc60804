#!/usr/bin/env bash
# Idempotent setup: a virtual environment at .venv, the CPU build of torch 2.13.0 first (any other
# torch requirement would pull the CUDA build), then geoptim in editable mode with its test extra
# (which brings the bench, analysis and docs extras, transformers, lightning, build and twine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.setup-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import geoptim, torch" 2>/dev/null; then
    exit 0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
echo "$want" > "$stamp"
