#!/usr/bin/env bash
# Sets up (idempotent) and runs the default test suite (slow tests excluded) plus ruff.
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
.venv/bin/python -m pytest -q "$@"
