"""The papers' presets of the GPU tasks: one per (task, architecture, optimizer), from the tables
the citations name, and a refusal where the tables give none."""

from __future__ import annotations

import pytest

from geoptim.bench import tasks
from geoptim.bench.presets import (
    PAPER_TABLES,
    MissingPreset,
    Presets,
    paper_preset,
    paper_provenance,
    preset_key,
)
from geoptim.bench.suites import SUITES, build_specs, select
from geoptim.cli import main


def test_cifar100_vgg11_lpsgdm_is_table_5() -> None:
    preset = paper_preset("cifar100", "lpsgdm", {"model": "vgg11"})
    assert (preset["p_max"], preset["lr"], preset["weight_decay"]) == (8, 5e-4, 5e-4)
    assert preset["momentum"] == 0.9 and preset["lr_schedule"] == "cosine"
    citation = paper_provenance("cifar100", "lpsgdm", {"model": "vgg11"})["citation"]
    assert citation == "LPSGD paper, table 5 (CIFAR-100, VGG-11)"


def test_imagenet_resnet50_lpsgdm_is_table_6() -> None:
    preset = paper_preset("imagenet", "lpsgdm")  # the defaults: ResNet-50 at batch 128
    assert (preset["p_max"], preset["lr"], preset["weight_decay"]) == (9, 2e-3, 5e-3)
    assert paper_preset("imagenet", "lion")["betas"] == (0.9, 0.99)
    assert paper_preset("cifar10", "lion")["betas"] == (0.9, 0.999)  # table 4's beta_2


def test_architectures_do_not_share_presets() -> None:
    vgg, resnet18, resnet50 = (
        paper_preset("cifar100", "lpsgdm", {"model": model})
        for model in ("vgg11", "resnet18", "resnet50")
    )
    assert vgg != resnet18 != resnet50 != vgg
    assert paper_preset("cifar100", "lpsgdm") == resnet18  # the task's default model
    sgdm50 = paper_preset("cifar10", "sgdm", {"model": "resnet50"})
    assert (sgdm50["lr"], sgdm50["weight_decay"]) == (0.05, 5e-4)


def test_options_outside_the_key_select_the_same_preset() -> None:
    options = {"model": "vgg11", "data_dir": "/x", "amp": "bf16", "channels_last": True}
    assert preset_key("cifar100", options) == "cifar100[model=vgg11]"
    assert preset_key("imagenet", {"amp": "bf16"}) == "imagenet[batch_size=128,model=resnet50]"
    assert preset_key("digits", {"model": "vgg"}) is None


def test_missing_preset_refuses() -> None:
    with pytest.raises(MissingPreset, match=r"no preset for cifar100\[model=vgg11\] x adan"):
        paper_preset("cifar100", "adan", {"model": "vgg11"})
    with pytest.raises(MissingPreset, match=r"imagenet\[batch_size=128,model=vgg11\]"):
        Presets().hparams("imagenet", {"model": "vgg11"}, "sgdm")
    with pytest.raises(MissingPreset, match=r"tinyimagenet\[model=resnet18\] x lpsgdm"):
        paper_provenance("tinyimagenet", "lpsgdm")


def test_missing_preset_in_dry_run_is_one_line(tmp_path, capsys) -> None:
    argv = ["bench", "--suite", "full", "--tasks", "cifar100:model=vgg11", "--optimizers", "adan"]
    assert main([*argv, "--dry-run", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geoptim: error: no preset for cifar100[model=vgg11] x adan")
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", sorted(PAPER_TABLES))
def test_agr_variants_and_controls_take_their_base(key: str) -> None:
    task, _, inner = key.partition("[")
    options = dict(item.split("=") for item in inner.rstrip("]").split(","))
    options = {k: int(v) if v.isdigit() else v for k, v in options.items()}
    if "adamw" in PAPER_TABLES[key]:
        assert paper_preset(task, "adamw_agr", options) == paper_preset(task, "adamw", options)
    if "lpsgdm" in PAPER_TABLES[key]:
        assert paper_preset(task, "sgdm_rms", options) == paper_preset(task, "lpsgdm", options)
        lpsgd = paper_preset(task, "lpsgd", options)  # fig. 2: LPSGDM's values, no momentum
        lpsgdm = paper_preset(task, "lpsgdm", options)
        assert {**lpsgd, "momentum": lpsgdm["momentum"]} == lpsgdm and "momentum" not in lpsgd
        sgd, sgdm = paper_preset(task, "sgd", options), paper_preset(task, "sgdm", options)
        assert (sgd["lr"], sgd["weight_decay"]) == (sgdm["lr"], sgdm["weight_decay"])
        assert "fig. 2" in paper_provenance(task, "lpsgd", options)["citation"]


def test_sepnorm_batch_sizes_scale_the_lr_linearly() -> None:
    at = {
        batch: paper_preset("imagenet", "sepnorm", {"batch_size": batch})
        for batch in (64, 256, 512)
    }
    assert at[256]["lr"] == 7.5e-5 and at[256]["weight_decay"] == 1.0
    assert at[64]["lr"] == pytest.approx(at[256]["lr"] / 4)
    assert at[512]["lr"] == pytest.approx(2 * at[256]["lr"])
    assert {p["weight_decay"] for p in at.values()} == {1.0}
    assert paper_preset("imagenet", "adamw", {"batch_size": 256})["lr"] == 7.5e-4


def test_full_suite_per_table() -> None:
    specs = build_specs(
        select("full"), Presets(), "full", lambda name, o: tasks.get_task(name, **o)
    )
    gpu = {"cifar10", "cifar100", "imagenet", "tinyimagenet"}
    tables = {exp.table for exp in SUITES["full"] if exp.task in gpu}
    expected = {"LPSGD table 1", "LPSGD table 2", "LPSGD table 3", "LPSGD fig. 2"}
    assert expected | {"AGR table 5", "SepNorm table 2"} <= tables
    for spec in specs:
        if spec.task in gpu:
            assert spec.preset_provenance["citation"].split(",")[0].endswith("paper")
    imagenet = [s for s in specs if s.task == "imagenet"]
    assert {s.budget["epochs"] for s in imagenet if "batch_size" not in s.task_overrides} == {60}
    assert {s.budget["epochs"] for s in imagenet if "batch_size" in s.task_overrides} == {100}
    tiny = [s for s in specs if s.task == "tinyimagenet"]
    assert {s.task_overrides["model"] for s in tiny} == {
        "resnet18",
        "resnet50",
        "resnet101",
        "vgg11",
    }
    assert {s.seed for s in tiny} == set(range(4))  # the AGR paper's four runs


def test_tune_refuses_a_missing_preset_before_any_work(tmp_path, capsys) -> None:
    argv = ["tune", "--task", "tinyimagenet:data_dir=/nowhere", "--optimizer", "lion"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "no preset for tinyimagenet[model=resnet18] x lion" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
