"""``geoptim tune``: the search grid, the validation score, the provenance of a tuned preset (one
produced on a fixture task, and every shipped one), and a tuned preset that ``bench`` uses."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from geoptim.bench import presets, records, tune
from geoptim.bench.presets import paper_preset
from geoptim.cli import main

SEEN_SEEDS: list[int] = []


@dataclass
class HeldOutTask:
    """A fixture task whose validation accuracy peaks at lr 1e-2 and whose test accuracy peaks
    at lr 0.1 (sgdm's paper lr): a tuner that looked at the test split would pick 0.1."""

    name: ClassVar[str] = "heldout"
    TUNING_METRIC: ClassVar[str] = "val_acc"

    def default_budget(self, suite: str) -> dict[str, Any]:
        return {"steps": 2, "eval_every": 1}

    def data_hash(self) -> str:
        return "0123456789abcdef"

    def run(
        self,
        optimizer: str,
        hparams: dict[str, Any],
        seed: int,
        budget: dict[str, Any],
        progress: Any = None,
        callbacks: Any = (),
    ) -> dict[str, Any]:
        SEEN_SEEDS.append(seed)
        log_lr = math.log10(hparams["lr"])
        val = 0.9 - 0.1 * abs(log_lr + 2) + 1e-4 * (seed % 7)
        test = 0.9 - 0.1 * abs(log_lr + 1)
        curves = {
            "step": [0, 1, 2],
            "train_loss": [2.0, 1.0, 0.5],
            "val_acc": [0.1, 0.5, val],
            "test_acc": [0.1, 0.5, test],
            "time_s": [0.0, 0.1, 0.2],
        }
        final = {key: values[-1] for key, values in curves.items() if key != "step"}
        return {"curves": curves, "final": final, "steps": 2, "extra": {"diverged": False}}


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    import geoptim.bench.tasks as tasks

    def get_task(name: str, **overrides: Any) -> HeldOutTask:
        if name != "heldout":
            raise ValueError(f"unknown task {name!r}")
        return HeldOutTask(**overrides)

    monkeypatch.setattr(tasks, "get_task", get_task, raising=False)
    monkeypatch.setattr(tasks, "list_tasks", lambda: ["heldout"], raising=False)
    SEEN_SEEDS.clear()


def check_provenance(provenance: dict[str, Any], hparams: dict[str, Any]) -> None:
    """The rules every tuned preset obeys (acceptance 2 of issue 10)."""
    assert provenance["source"] == "geoptim tune"
    assert provenance["selected_on"] == "validation"
    assert provenance["metric"] in tune.METRICS and "test" not in provenance["metric"]
    seeds = provenance["seeds"]
    assert seeds and all(seed >= tune.SEED_BASE for seed in seeds)  # no benchmark seed
    space = provenance["search_space"]
    assert space and all(hparams[key] in values for key, values in space.items())
    assert provenance["trials"] >= 2 and provenance["budget"] and provenance["date"]


def test_grid_spans_lr_weight_decay_and_p_max():
    base = paper_preset("digits", "lpsgdm")
    points = tune.grid("lpsgdm", base)
    assert len(points) == len(tune.LR_FACTORS) * len(tune.WD_FACTORS) * len(tune.P_MAX_VALUES)
    lr, wd = base["lr"], base["weight_decay"]
    assert sorted(p["lr"] for p in points if p["weight_decay"] == wd and p["p_max"] == 6) == [
        pytest.approx(lr * f) for f in tune.LR_FACTORS
    ]
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


def test_score_reads_validation_only():
    ok = {"result": {"final": {"val_acc": 0.5, "test_acc": 0.1}, "extra": {}}}
    better = {"result": {"final": {"val_acc": 0.7, "test_acc": 0.0}, "extra": {}}}
    diverged = {"result": {"final": {"val_acc": 0.9}, "extra": {"diverged": True}}}
    assert tune.score([ok, better]) == pytest.approx(0.6)
    assert tune.score([ok, diverged]) == -math.inf
    assert tune.score([ok, None]) == -math.inf
    assert tune.score([{"result": {"final": {"test_acc": 0.9}}}]) == -math.inf  # no val: none
    assert tune.score([{"result": {"final": {"train_loss": 0.2}}}], "-train_loss") == -0.2
    curve = {"result": {"curves": {"val_acc": [0.0, 0.5, 1.0]}, "final": {"val_acc": 1.0}}}
    assert tune.score([curve], "val_acc_mean") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tuning metric"):
        tune.score([ok], "test_acc")


def test_tuner_selects_on_validation_with_tuning_seeds(tmp_path):
    task = HeldOutTask()
    space = {"lr": [1e-3, 1e-2, 0.1]}
    path, trials = tune.tune(task, "heldout", {}, "sgdm", 10, tmp_path, seeds=2, space=space)
    preset = presets.load_preset_file(path)
    assert preset["hparams"]["lr"] == 1e-2  # the test split's favourite would be 0.1
    assert trials[0].setting["lr"] == 1e-2 and len(trials) == 3
    check_provenance(preset["provenance"], preset["hparams"])
    assert preset["provenance"]["seeds"] == [1000, 1001] and set(SEEN_SEEDS) == {1000, 1001}
    assert preset["provenance"]["search_space"] == space
    assert preset["provenance"]["data_hash"] == task.data_hash()
    loaded = presets.Presets([preset])
    assert loaded.provenance("heldout", {}, "sgdm")["metric"] == "val_acc"
    assert loaded.source("heldout", {}, "sgdm") == "tuned"
    assert loaded.source("heldout", {}, "lion") == "paper"
    assert loaded.provenance("heldout", {}, "lion")["source"] == "paper"


def test_shipped_presets_provenance():
    """Every shipped preset was chosen on validation data with tuning seeds, on the data the
    task generates today."""
    from geoptim.bench import tasks

    shipped = presets.shipped_presets()
    assert {entry["task"] for entry in shipped} >= {"digits", "mnist1d", "grokking", "quadratic"}
    hashes: dict[str, str] = {}
    for entry in shipped:
        check_provenance(entry["provenance"], entry["hparams"])
        label = records.task_label(entry["task"], entry["task_overrides"])
        if label not in hashes:
            task = tasks.TASKS[entry["task"]](**entry["task_overrides"])
            hashes[label] = task.data_hash()
        assert entry["provenance"]["data_hash"] == hashes[label], label
    keys = [(records.task_label(e["task"], e["task_overrides"]), e["optimizer"]) for e in shipped]
    assert len(keys) == len(set(keys))


def test_hand_written_preset_file_is_labelled(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"task": "digits", "optimizer": "sgdm", "hparams": {"lr": 0.2}}))
    loaded = presets.load_presets("paper", files=[path])
    assert loaded.hparams("digits", {}, "sgdm") == {"lr": 0.2}
    provenance = loaded.provenance("digits", {}, "sgdm")
    assert provenance["source"] == "preset file" and provenance["file"] == str(path)
    path.write_text(json.dumps({"task": "digits", "optimizer": "sgdm"}))
    with pytest.raises(ValueError, match="hparams"):
        presets.load_preset_file(path)


def test_tuned_presets_cover_their_base_optimizers():
    entry = {
        "task": "digits",
        "task_overrides": {},
        "optimizer": "lpsgdm",
        "hparams": {"lr": 0.5, "p_max": 4},
        "provenance": {"source": "geoptim tune"},
    }
    loaded = presets.Presets([entry])
    assert loaded.hparams("digits", {}, "sgdm_rms") == {"lr": 0.5, "p_max": 4}
    assert loaded.source("digits", {}, "sgdm_rms") == "tuned"
    assert loaded.provenance("digits", {}, "sgdm_rms")["optimizer"] == "lpsgdm"
    paper = presets.load_presets("paper")
    assert paper.source("digits", {}, "lpsgdm") == "paper"
    assert paper.hparams("digits", {}, "sgdm_rms") == paper_preset("digits", "lpsgdm")
    with pytest.raises(ValueError):
        presets.load_presets("best")


def test_tune_writes_a_preset_that_bench_uses(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "tune",
                "--task",
                "heldout",
                "--optimizer",
                "sgdm",
                "--budget",
                "100",
                "--workers",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    preset = json.loads((out / "presets" / "heldout__sgdm.json").read_text())
    assert preset["hparams"]["lr"] == 0.01
    assert preset["task"] == "heldout" and preset["optimizer"] == "sgdm"
    assert len(preset["provenance"]["all_trials"]) == 20
    check_provenance(preset["provenance"], preset["hparams"])
    assert "best: {'lr': 0.01" in capsys.readouterr().out

    assert (
        main(
            [
                "bench",
                "--tasks",
                "heldout",
                "--optimizers",
                "sgdm",
                "lion",
                "--presets",
                "tuned",
                "--workers",
                "1",
                "--quiet",
                "--no-report",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    recs = list(records.iter_records(out))
    sgdm = [r for r in recs if r["config"]["optimizer"] == "sgdm"]
    assert sgdm and all(r["config"]["hparams"] == preset["hparams"] for r in sgdm)
    assert all(r["label"] == "sgdm [tuned]" for r in sgdm)
    lion = [r for r in recs if r["config"]["optimizer"] == "lion"]
    lion_preset = json.loads(json.dumps(paper_preset("heldout", "lion")))
    assert lion and all(r["config"]["hparams"] == lion_preset for r in lion)

    assert (
        main(
            [
                "bench",
                "--tasks",
                "heldout",
                "--optimizers",
                "sgdm",
                "--workers",
                "1",
                "--quiet",
                "--no-report",
                "--presets",
                "paper",
                "--preset-file",
                str(out / "presets" / "heldout__sgdm.json"),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 0
    )
    (rec,) = [r for r in records.iter_records(tmp_path / "o2") if r["seed"] == 0]
    assert rec["config"]["hparams"]["lr"] == 0.01


def test_tune_rejects_bad_configuration(tmp_path, capsys):
    assert main(["tune", "--task", "heldout", "--optimizer", "adamx", "--out", str(tmp_path)]) == 2
    assert "unknown optimizer 'adamx'" in capsys.readouterr().err
    assert main(["tune", "--task", "nope", "--optimizer", "sgdm", "--out", str(tmp_path)]) == 2
    assert main(["tune", "--task", "heldout", "--optimizer", "sgdm", "--budget", "0"]) == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("task", ["digits", "mnist1d", "grokking"])  # GPU tasks: test_presets
def test_agr_variants_share_their_base_settings(task):
    assert paper_preset(task, "adamw_agr") == paper_preset(task, "adamw")
    assert paper_preset(task, "adan_agr") == paper_preset(task, "adan")


def test_paper_grokking_settings_for_the_transformer():
    transformer = {"model": "transformer"}
    assert paper_preset("grokking", "adamw", transformer)["betas"] == (0.9, 0.98)
    for name, wd in (("adamw", 1.0), ("lion", 5.0), ("sepnorm", 5.0), ("ortsepnorm", 0.1)):
        preset = paper_preset("grokking", name, transformer)
        assert (preset["lr"], preset["weight_decay"]) == (1e-3, wd)


def test_run_value_reads_any_validation_metric_and_refuses_the_test_split():
    result = {"final": {"val_loss": 0.25, "val_bpc": 2.5, "test_acc": 0.9}, "curves": {}}
    result["curves"]["val_acc"] = [0.2, 0.4, 0.9]
    assert tune.run_value(result, "-val_loss") == -0.25
    assert tune.run_value(result, "-val_bpc") == -2.5
    assert tune.run_value(result, "val_acc_mean") == pytest.approx(0.5)
    assert math.isnan(tune.run_value(result, "val_acc"))
    for metric in ("test_acc", "-test_loss", "test_acc_mean"):
        with pytest.raises(ValueError, match="test split"):
            tune.run_value(result, metric)
