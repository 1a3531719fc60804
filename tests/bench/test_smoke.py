"""The smoke suite: it covers every task configuration, run kind and optimizer of every suite,
puts folder datasets on stand-in data and runs through the runner, records and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from geoptim.bench import records
from geoptim.bench.data import load_cifar
from geoptim.bench.presets import load_presets
from geoptim.bench.report import build_report
from geoptim.bench.runner import execute
from geoptim.bench.suites import SMOKE, SUITES, build_specs, for_smoke_run
from geoptim.bench.tasks import get_task
from geoptim.cli.common import make_task


def task_key(exp) -> str:
    return json.dumps([exp.task, exp.task_overrides, exp.kind], sort_keys=True)


def test_the_smoke_suite_covers_every_task_configuration_and_optimizer_of_every_suite():
    others = [exp for name, exps in SUITES.items() if name != SMOKE for exp in exps]
    smoke = SUITES[SMOKE]
    assert {task_key(exp) for exp in smoke} == {task_key(exp) for exp in others}
    assert {o for exp in smoke for o in exp.optimizers} == {
        o for exp in others for o in exp.optimizers
    }
    assert all(exp.seeds == 1 and len(exp.optimizers) == 1 for exp in smoke)
    assert len(smoke) <= len({task_key(e) for e in others}) + len(
        {o for e in others for o in e.optimizers}
    )


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_stand_in_data_is_the_python_pickle_layout(name, tmp_path):
    overrides = get_task(name).write_stand_in(tmp_path)
    (x_train, y_train), (x_test, y_test) = load_cifar(name, overrides["data_dir"])
    assert x_train.shape[1:] == x_test.shape[1:] == (3, 32, 32)
    assert len(x_train) == len(y_train) > overrides["n_val"] and len(y_test) == len(x_test)
    data = get_task(name, **overrides).make_data(0)  # the overrides make a task that fits
    assert data.steps_per_epoch >= 1
    again = get_task(name).write_stand_in(tmp_path / "again")
    assert load_cifar(name, again["data_dir"])[0][0].equal(x_train)  # fixed seed


def test_one_run_of_every_task_passes_the_runner_and_the_report(tmp_path):
    """The default-suite part of the smoke suite: every task name and run kind once."""
    first = {}
    for exp in SUITES[SMOKE]:
        first.setdefault((exp.task, exp.kind), exp)
    experiments = for_smoke_run(list(first.values()), tmp_path / "stand-in")
    for exp in experiments:
        if exp.task.startswith("cifar"):
            assert exp.task_overrides["data_dir"].startswith(str(tmp_path))
    specs = build_specs(experiments, load_presets("paper"), SMOKE, make_task)
    assert all(spec.task_overrides.get("device", "cpu") == "cpu" for spec in specs)
    out = tmp_path / "out"
    summary = execute(specs, out, workers=1, quiet=True)
    assert not summary.failed, summary.failed[0].error
    found = list(records.iter_records(out))
    assert len(found) == len(specs)
    assert Path(build_report(out, suite=SMOKE)).is_file()


WORKERS = ("--workers", "1", "--quiet")


@pytest.mark.slow
def test_geoptim_bench_smoke_runs_the_whole_suite(tmp_path):
    out = tmp_path / "out"
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "geoptim", "bench", "--suite", SMOKE, "--out", str(out), *WORKERS],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(list(records.iter_records(out))) == len(SUITES[SMOKE])
    assert (out / "report.md").is_file()
