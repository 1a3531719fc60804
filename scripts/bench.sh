#!/usr/bin/env bash
# Sets up (idempotent) and runs geoptim's main job: the quick benchmark suite on data that ships
# with the install, writing records and the report to results/quick (or the --out you pass).
# Extra arguments go to `geoptim bench`, e.g. `bash scripts/bench.sh --seeds 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/geoptim bench --suite quick --out results/quick "$@"
echo "report: results/quick/report.md"
