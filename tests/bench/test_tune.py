"""``geoptim tune``: the search grid, the score, and a tuned preset that ``bench`` then uses."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from geoptim.bench import records, tune
from geoptim.bench.presets import paper_preset
from geoptim.cli import main

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import fake_task


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    import geoptim.bench.tasks as tasks

    monkeypatch.setattr(tasks, "get_task", fake_task.get_task, raising=False)
    monkeypatch.setattr(tasks, "list_tasks", fake_task.list_tasks, raising=False)


def test_grid_spans_lr_weight_decay_and_p_max():
    base = paper_preset("digits", "lpsgdm")
    points = tune.grid("lpsgdm", base)
    assert len(points) == len(tune.LR_FACTORS) * len(tune.WD_FACTORS) * len(tune.P_MAX_VALUES)
    lr, wd = base["lr"], base["weight_decay"]
    assert sorted(p["lr"] for p in points if p["weight_decay"] == wd and p["p_max"] == 6) == [
        pytest.approx(lr * f) for f in tune.LR_FACTORS]
    assert {p["weight_decay"] for p in points} == {0.0, wd / 10, wd, wd * 10}
    assert {"lr": lr, "weight_decay": wd, "p_max": 6} in points
    no_wd = tune.grid("normsgd", paper_preset("digits", "normsgd"))
    assert {p["weight_decay"] for p in no_wd} == set(tune.WD_VALUES)
    assert all("p_max" not in p for p in no_wd)


def test_choose_starts_with_the_preset_and_is_reproducible():
    base = paper_preset("digits", "sgdm")
    points = tune.grid("sgdm", base)
    chosen = tune.choose(points, base, 5)
    assert chosen[0] == {"lr": base["lr"], "weight_decay": base["weight_decay"]}
    assert len(chosen) == 5 and len({json.dumps(c, sort_keys=True) for c in chosen}) == 5
    assert chosen == tune.choose(points, base, 5)
    assert len(tune.choose(points, base, 1000)) == len(points)


def test_score():
    ok = {"result": {"final": {"test_acc": 0.5}, "extra": {}}}
    better = {"result": {"final": {"test_acc": 0.7}, "extra": {}}}
    diverged = {"result": {"final": {"test_acc": 0.9}, "extra": {"diverged": True}}}
    assert tune.score([ok, better]) == pytest.approx(0.6)
    assert tune.score([ok, diverged]) == -math.inf
    assert tune.score([ok, None]) == -math.inf
    assert tune.score([{"result": {"final": {"train_loss": 0.2}}}]) == -0.2


def test_tune_writes_a_preset_that_bench_uses(tmp_path, capsys):
    out = tmp_path / "out"
    # the fake task's accuracy peaks at lr 1e-2; sgdm's paper lr is 0.1
    assert main(["tune", "--task", "fake", "--optimizer", "sgdm", "--budget", "100",
                 "--workers", "1", "--quiet", "--out", str(out)]) == 0
    preset = json.loads((out / "presets" / "fake__sgdm.json").read_text())
    assert preset["hparams"]["lr"] == 0.01
    assert preset["task"] == "fake" and preset["optimizer"] == "sgdm"
    assert len(preset["trials"]) == 20
    assert "best: {'lr': 0.01" in capsys.readouterr().out

    assert main(["bench", "--tasks", "fake", "--optimizers", "sgdm", "lion", "--presets",
                 "tuned", "--workers", "1", "--quiet", "--no-report", "--out", str(out)]) == 0
    recs = list(records.iter_records(out))
    sgdm = [r for r in recs if r["config"]["optimizer"] == "sgdm"]
    assert len(sgdm) == 3
    assert all(r["config"]["hparams"] == preset["hparams"] for r in sgdm)
    assert all(r["label"] == "sgdm [tuned]" for r in sgdm)
    lion = [r for r in recs if r["config"]["optimizer"] == "lion"]
    lion_preset = json.loads(json.dumps(paper_preset("fake", "lion")))
    assert all(r["config"]["hparams"] == lion_preset for r in lion)

    assert main(["bench", "--tasks", "fake", "--optimizers", "sgdm", "--workers", "1",
                 "--quiet", "--no-report", "--preset-file",
                 str(out / "presets" / "fake__sgdm.json"), "--out", str(tmp_path / "o2")]) == 0
    (rec,) = [r for r in records.iter_records(tmp_path / "o2") if r["seed"] == 0]
    assert rec["config"]["hparams"]["lr"] == 0.01


def test_tune_rejects_bad_configuration(tmp_path, capsys):
    assert main(["tune", "--task", "fake", "--optimizer", "adamx", "--out", str(tmp_path)]) == 2
    assert "unknown optimizer 'adamx'" in capsys.readouterr().err
    assert main(["tune", "--task", "nope", "--optimizer", "sgdm", "--out", str(tmp_path)]) == 2
    assert main(["tune", "--task", "fake", "--optimizer", "sgdm", "--budget", "0"]) == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("task", ["digits", "mnist1d", "grokking", "cifar10", "cifar100"])
def test_agr_variants_share_their_base_settings(task):
    assert paper_preset(task, "adamw_agr") == paper_preset(task, "adamw")
    assert paper_preset(task, "adan_agr") == paper_preset(task, "adan")


def test_paper_grokking_settings_for_the_transformer():
    transformer = {"model": "transformer"}
    assert paper_preset("grokking", "adamw", transformer)["betas"] == (0.9, 0.98)
    for name, wd in (("adamw", 1.0), ("lion", 5.0), ("sepnorm", 5.0), ("ortsepnorm", 0.1)):
        preset = paper_preset("grokking", name, transformer)
        assert (preset["lr"], preset["weight_decay"]) == (1e-3, wd)
