"""The curvature recorder and the experiments on the digits task (small settings), and the
momentum-tracing comparison of acceptance 3 (slow)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from geoptim.analysis.curvature import CurvatureRecorder, summarize
from geoptim.bench.experiments import curvature_experiment, momentum_tracing_experiment
from geoptim.cli import curvature as cli
from geoptim.cli.common import check_task


def test_summary_measures() -> None:
    nodes = torch.tensor([-1.0, 0.0, 10.0], dtype=torch.float64)
    weights = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    measures = summarize([10.0], trace=20.0, nodes=nodes, weights=weights)
    assert measures["anisotropy"] == pytest.approx(10.0 / 2.75)
    assert measures["top_fraction"] == pytest.approx(0.5)
    assert measures["lambda_min"] == -1.0
    assert measures["negative_mass"] == pytest.approx(0.25)


def test_recorder_restores_mode_and_records_chosen_epochs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    recorder = CurvatureRecorder(
        F.cross_entropy, data, at=[2], k=2, slq_steps=8, trace_samples=10, mode="train"
    )
    model.eval()
    recorder.on_epoch_end(1, model, None)
    recorder.on_epoch_end(2, model, None)
    assert not model.training
    assert [r["epoch"] for r in recorder.records] == [2]
    record = recorder.records[0]
    assert len(record["top_eigenvalues"]) == 2
    assert record["top_eigenvalues"][0] >= record["top_eigenvalues"][1]
    assert sum(record["weights"]) == pytest.approx(1.0)
    json.dumps(record)


def test_curvature_command_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--option",
            "width=4",
            "--epochs",
            "1",
            "--at",
            "0,1,5",
            "--hessian-samples",
            "32",
            "--k",
            "1",
            "--slq-probes",
            "1",
            "--slq-steps",
            "8",
            "--trace-samples",
            "10",
            "--out",
            str(tmp_path),
        ]
    )
    assert cli.run(args) == 0
    assert "epoch   1: lambda_max" in capsys.readouterr().out
    saved = json.loads((tmp_path / "curvature.json").read_text())
    assert [r["epoch"] for r in saved["records"]] == [0, 1]
    assert all(math.isfinite(r["top_eigenvalues"][0]) for r in saved["records"])
    assert saved["config"]["optimizer"] == "sgdm"
    assert saved["config"]["task_options"] == {"width": 4}
    assert (tmp_path / "curvature.png").stat().st_size > 0


def test_curvature_experiment_rejects_untrainable_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no model"):
        curvature_experiment(tmp_path, task="quadratic")


def test_cli_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--optimizer",
            "adamw",
            "--at",
            "0,2",
            "--option",
            "width=8",
            "--hparam",
            "betas=[0.9, 0.99]",
            "--out",
            str(tmp_path),
        ]
    )
    assert args.at == [0, 2]
    assert args.option == [("width", "8")]  # text, read by the option's declared type:
    assert check_task("digits", dict(args.option)) == ("digits", {"width": 8})
    assert args.hparam == [("betas", [0.9, 0.99])]
    with pytest.raises(SystemExit):
        parser.parse_args(["--at", "x"])


def test_momentum_tracing_experiment_smoke(tmp_path: Path) -> None:
    payload = momentum_tracing_experiment(
        tmp_path, runs=[("lion", "relu")], epochs=1, batch_size=64, width=4
    )
    run = payload["runs"]["lion / relu"]
    assert len(run["tracing"]["step"]) == len(run["quantile"]["step"]) - 1
    assert (tmp_path / "momentum_tracing.png").stat().st_size > 0


@pytest.mark.slow
def test_momentum_tracing_lion_relu_against_leaky_relu_and_sepnorm(tmp_path: Path) -> None:
    """Acceptance 3: Lion on the BN + ReLU digits ResNet shows momentum tracing; leaky ReLU
    and SepNorm show much less (measured: 456 / 0 / 96 BN-bias events, seed 0)."""
    payload = momentum_tracing_experiment(
        tmp_path, runs=[("lion", "relu"), ("lion", "leaky_relu"), ("sepnorm", "relu")]
    )
    totals = {label: run["summary"] for label, run in payload["runs"].items()}
    lion = totals["lion / relu"]
    assert lion["bn_bias_total"] > 0 and lion["other_total"] > 0
    for other in ("lion / leaky_relu", "sepnorm / relu"):
        assert totals[other]["bn_bias_total"] <= 0.5 * lion["bn_bias_total"]
        assert totals[other]["other_total"] <= 0.5 * lion["other_total"]
