"""The package as a user installs it: a light ``import geoptim``, the CLI without the extras, the
README's and the docs' links, and (slow) the wheel and sdist themselves."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what the extras bring; the core (`pip install geoptim`) must not need any of it
EXTRA_ONLY = ("numpy", "matplotlib", "sklearn", "scipy", "mnist1d", "tqdm")
# Runs first in a fresh interpreter: every EXTRA_ONLY package becomes unimportable (a None entry
# in sys.modules), as in an environment where only torch is installed.
BLOCK_EXTRAS = f"import sys\nsys.modules.update(dict.fromkeys({EXTRA_ONLY!r}))\n"
STEP_EVERY_OPTIMIZER = textwrap.dedent(
    """
    import torch, geoptim
    for name in geoptim.list_optimizers():
        model = torch.nn.Linear(3, 2)
        opt = geoptim.create_optimizer(model, name)
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
    """
)


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        # torch warns on import when numpy is absent, as it does in a torch-only environment
        [sys.executable, "-W", "ignore:Failed to initialize NumPy", "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_import_geoptim_loads_no_extra_library():
    # torch itself imports numpy and tqdm when they are installed (and its first optimizer step
    # loads more): count what `import geoptim` adds to `import torch`
    code = (
        "import sys, torch\nbefore = set(sys.modules)\nimport geoptim\n"
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    added = set(result.stdout.split())
    assert "geoptim" in added
    assert not added & set(EXTRA_ONLY), added


def test_core_works_without_the_extras():
    result = _python(BLOCK_EXTRAS + STEP_EVERY_OPTIMIZER + "print(geoptim.__version__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _version()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return _python(BLOCK_EXTRAS + "import sys, geoptim.cli\nsys.exit(geoptim.cli.main())", *args)


def test_cli_version_and_bare_command_without_the_extras():
    version = _cli("--version")
    assert (version.returncode, version.stdout) == (0, f"geoptim {_version()}\n")
    bare = _cli()
    assert bare.returncode == 0 and bare.stdout.startswith("usage: geoptim")
    assert all(f"    {command} " in bare.stdout for command in ("bench", "report", "train"))


# bench, report and tune import their libraries when they run; curvature's module needs
# matplotlib at import, so the parser lists it as a stub
@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("bench", ["--tasks", "digits", "--optimizers", "sgdm", "--out", "OUT"]),
        ("report", ["OUT"]),
        ("tune", ["--task", "digits", "--optimizer", "sgdm", "--out", "OUT"]),
        ("curvature", ["--task", "digits", "--optimizer", "sgdm", "--out", "OUT"]),
    ],
)
def test_cli_command_without_its_extra_names_the_extra(command, args, tmp_path):
    (tmp_path / "records").mkdir()
    result = _cli(command, *[str(tmp_path) if arg == "OUT" else arg for arg in args])
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"geoptim: error: 'geoptim {command}' needs the 'bench' extra")
    assert line.endswith('pip install "geoptim[bench]"')


def _version() -> str:
    text = (ROOT / "src/geoptim/__init__.py").read_text()
    return re.search(r'^__version__ = "(.+)"$', text, re.M).group(1)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path):
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = (path.parent / target.split("#")[0]).resolve()
        assert file.exists(), f"{path.name}: link {target!r} points to nothing"


@pytest.mark.slow
def test_wheel_and_sdist_build_check_and_install_into_a_fresh_venv():
    # scripts/check_dist.sh: build, twine check --strict, LICENSE inside, fresh venv, import
    result = subprocess.run(
        ["bash", "scripts/check_dist.sh"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"geoptim {_version()}\n" in result.stdout
