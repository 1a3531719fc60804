#!/usr/bin/env bash
# Idempotent setup: a virtual environment at .venv, the CPU build of torch 2.13.0 first (any other
# torch requirement would pull the CUDA build), then geoptim in editable mode with one extra:
# `bench` (the default: what the benchmark needs) or `test` (everything: bench, analysis, docs,
# cluster, the framework integrations and the packaging tools). A venv set up for `test` serves
# `bench` too.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-bench}
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.setup-stamp"
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && .venv/bin/python -c "import geoptim, torch" 2>/dev/null; then
    case "$(cat "$stamp")" in
        "$hash test" | "$hash $extra") exit 0 ;;
    esac
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra]"
echo "$hash $extra" > "$stamp"
