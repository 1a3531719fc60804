#!/usr/bin/env bash
# Builds the wheel and the sdist, checks them (twine check, LICENSE and README inside, no tests or
# results shipped), installs the wheel into a fresh virtual environment that gets torch 2.13.0
# and nothing else, and imports it there. Run by the slow tests (tests/test_packaging.py).
# PYTHON: the interpreter with `build` and `twine` (default: .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m build --no-isolation --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
    cat "$work/build.log"
    exit 1
}
"$PYTHON" -m twine check --strict "$work"/dist/*
"$PYTHON" - "$work/dist" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path

dist = Path(sys.argv[1])
(wheel,) = dist.glob("*.whl")
(sdist,) = dist.glob("*.tar.gz")
wheel_names = zipfile.ZipFile(wheel).namelist()
sdist_names = [name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name]
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names), "LICENSE not in wheel"
assert "LICENSE" in sdist_names and "README.md" in sdist_names, "LICENSE/README not in sdist"
assert "geoptim/py.typed" in wheel_names and "geoptim/integrations/transformers.py" in wheel_names
assert "geoptim/csrc/fused.c" in wheel_names, "the fused kernels' C source not in wheel"
assert not [n for n in wheel_names if n.startswith(("tests/", "results/", "benchmarks/"))]
print(f"{wheel.name}: {len(wheel_names)} files; {sdist.name}: {len(sdist_names)} files")
PY

# The fresh venv is made by the interpreter $PYTHON's own venv was made from, and sees nothing
# else: a PYTHONPATH (say, src/ with the build's egg-info) would hide the wheel from pip.
unset PYTHONPATH PYTHONHOME
base="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
"$base" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$work"/dist/*.whl
cd "$work"  # away from the source tree: the installed copy must be the one imported
"$work/venv/bin/python" -W "ignore:Failed to initialize NumPy" - <<'PY'
import importlib.metadata, sys
import torch, geoptim

assert geoptim.__file__.startswith(sys.prefix), geoptim.__file__
assert importlib.metadata.version("geoptim") == geoptim.__version__
requires = importlib.metadata.requires("geoptim")
core = [r for r in requires if "extra ==" not in r]
assert [r.split(">")[0].split("=")[0].strip() for r in core] == ["torch"], core
model = torch.nn.Linear(3, 2)
for name in geoptim.list_optimizers():
    opt = geoptim.create_optimizer(model, name)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    opt.zero_grad()
for absent in ("numpy", "matplotlib", "sklearn", "scipy", "mnist1d"):
    assert absent not in sys.modules, absent
print(f"geoptim {geoptim.__version__} from the wheel, torch {torch.__version__}: ok")
PY
PYTHONWARNINGS="ignore:Failed to initialize NumPy" "$work/venv/bin/geoptim" --version
