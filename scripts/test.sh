#!/usr/bin/env bash
# Sets up (idempotent) and runs the checks: ruff (lint and format), the documentation build
# (mkdocs --strict: any warning fails) and the default test suite (slow tests excluded).
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests scripts
.venv/bin/ruff format --check src tests scripts
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir build/site
.venv/bin/python -m pytest -q "$@"
