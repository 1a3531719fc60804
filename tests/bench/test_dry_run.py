"""The full suite's dry run: runs and device-hours per paper table from a measured (then cached)
throughput, stand-in data where the real data is absent."""

from __future__ import annotations

import json

import pytest

from geoptim.bench.presets import load_presets
from geoptim.bench.suites import (
    FULL,
    THROUGHPUT_FILE,
    Experiment,
    build_specs,
    measure_throughput,
    table_plan_text,
    tables_of,
)
from geoptim.bench.tasks import get_task
from geoptim.cli.common import make_task

EXPERIMENTS = (
    Experiment("cmp", "digits", ("sgdm", "sgdm_rms"), seeds=2, budget={"epochs": 2}, table="T1"),
    Experiment("sweep", "digits", ("sgdm",), seeds=1, variants=({"lr": 0.3},), table="T2"),
    Experiment("quadratic", "quadratic", ("sgd",), seeds=3),
)


def test_an_experiment_without_a_table_is_its_own():
    assert EXPERIMENTS[2].table == "quadratic"


def test_device_hours_per_table_follow_from_the_cached_throughput(tmp_path):
    specs = build_specs(EXPERIMENTS, load_presets("paper"), FULL, make_task)
    tables = tables_of(EXPERIMENTS, load_presets("paper"), FULL, make_task)
    text = table_plan_text(specs, tables, make_task, tmp_path)
    cache = json.loads((tmp_path / THROUGHPUT_FILE).read_text())
    assert list(cache) == ["digits on cpu"]
    digits = cache["digits on cpu"]
    assert digits["data"] == "real" and digits["step_s"] > 0 and digits["eval_s"] >= 0

    per_epoch = get_task("digits").make_data(0).steps_per_epoch
    one_run = 2 * per_epoch * digits["step_s"] + 3 * digits["eval_s"]  # 2 epochs, 3 evaluations
    hours = (2 * one_run + 2 * 2 * one_run) / 3600  # sgdm and sgdm_rms (which runs twice), 2 seeds
    rows = {line.split(" | ")[0]: line.split(" | ") for line in text.splitlines() if " | " in line}
    assert rows["T1"][1:] == ["4", "cpu", f"{hours:.1f}"]
    assert rows["T2"][1] == "1" and rows["quadratic"][1:3] == ["3", "cpu (estimated)"]
    assert f"{len(specs)} runs" in text

    def no_measuring(task):
        raise AssertionError("the cached throughput is used")

    assert table_plan_text(specs, tables, make_task, tmp_path, measure=no_measuring) == text


def test_a_folder_task_without_its_data_is_timed_on_stand_in_data(tmp_path):
    task = get_task("cifar10", data_dir=str(tmp_path / "absent"), batch_size=8, device="cpu")
    with pytest.raises(FileNotFoundError):
        task.make_data(0)
    throughput = measure_throughput(task)
    assert throughput["data"] == "stand-in (n_val=8, eval_train_size=8)"
    assert throughput["device"] == "cpu"
    assert throughput["step_s"] > 0
    assert task.nominal_steps_per_epoch() == -(-(50000 - 5000) // 8)


def test_geoptim_bench_full_dry_run_prints_tables_and_caches_the_throughput(tmp_path, capsys):
    from geoptim.cli import main

    argv = ["bench", "--suite", "full", "--tasks", "digits", "--seeds", "1", "--dry-run"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("paper table | runs | device | device-hours\n")
    assert "curvature | 2 | cpu (estimated) |" in text
    assert "digits | cpu | real |" in text
    assert set(json.loads((tmp_path / THROUGHPUT_FILE).read_text())) == {
        "digits on cpu",
        "digits[model=resnet] on cpu",
    }
    assert not (tmp_path / "records").exists()
