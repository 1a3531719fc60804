"""The shared training loop: schedules, budgets, callbacks, divergence, reproducibility, pairing,
and the control arms (fixed p, the RMS-matched SGD-momentum, AGR's measured relative change)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from geoptim import create_optimizer
from geoptim.bench.data import TensorData
from geoptim.bench.tasks.base import TrainableTask
from geoptim.bench.training import (
    UpdateRMSRecorder,
    budget_steps,
    lr_factor,
    step_measuring_agr,
    train,
)
from tests.bench.test_data import CURVE_KEYS


@dataclasses.dataclass
class ToyTask(TrainableTask):
    """Logistic regression on 10 fixed random points, batches of 4 (3 steps per epoch)."""

    name: ClassVar[str] = "toy"
    nan_after: int | None = None  # the loss becomes NaN from this loss_fn call on
    calls: int = 0

    def _build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))

    def make_data(self, seed: int) -> TensorData:
        gen = torch.Generator().manual_seed(123)
        x = torch.randn(10, 3, generator=gen)
        y = (x[:, 0] > 0).long()
        return TensorData(x, y, x[:6], y[:6], val=(x[6:], y[6:]), batch_size=4, seed=seed)

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = super().loss_fn(outputs, targets)
        if self.nan_after is not None and self.calls >= self.nan_after:
            loss = loss * float("nan")
        return loss


class Recorder:
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.epochs: list[int] = []
        self.momenta: list[float] = []

    def on_step(self, step: int, model: nn.Module, optimizer: Any, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.momenta.append(optimizer.param_groups[0].get("momentum", -1.0))

    def on_epoch_end(self, epoch: int, model: nn.Module, optimizer: Any) -> None:
        self.epochs.append(epoch)


class OnlySteps:
    def __init__(self) -> None:
        self.count = 0

    def on_step(self, step: int, model: nn.Module, optimizer: Any, loss: float) -> None:
        self.count += 1


def test_lr_factor() -> None:
    f = lr_factor(100, 0.1, "cosine")
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    g = lr_factor(100, 0.0, "constant")
    assert {g(s) for s in range(100)} == {1.0}
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(100, 0.0, "linear")
    with pytest.raises(ValueError, match="warmup_frac"):
        lr_factor(100, 1.0, "cosine")


def test_budget_steps() -> None:
    assert budget_steps({"epochs": 4}, 3) == (12, 3)
    assert budget_steps({"steps": 7, "eval_every": 2}, 3) == (7, 2)
    assert budget_steps({"steps": 7}, 3) == (7, 3)
    for bad in ({}, {"epochs": 1, "steps": 2}, {"epochs": 0}, {"steps": 5, "eval_every": 0}):
        with pytest.raises(ValueError):
            budget_steps(bad, 3)


def test_epoch_budget_curves_and_callbacks() -> None:
    recorder, only_steps, fractions = Recorder(), OnlySteps(), []
    result = train(
        ToyTask(),
        "sgdm",
        {"lr": 0.1, "momentum": 0.5},
        seed=0,
        budget={"epochs": 4},
        progress=fractions.append,
        callbacks=[recorder, only_steps, object()],
    )
    assert result["steps"] == 12
    assert recorder.steps == list(range(1, 13)) and only_steps.count == 12
    assert recorder.epochs == [1, 2, 3, 4]
    assert set(recorder.momenta) == {0.5}  # optimizer keywords reach the optimizer
    curves = result["curves"]
    assert curves["step"] == [0, 3, 6, 9, 12] and curves["epoch"] == [0, 1, 2, 3, 4]
    assert set(curves) == CURVE_KEYS
    assert all(len(v) == 5 for v in curves.values())
    assert curves["time_s"] == sorted(curves["time_s"])
    assert fractions == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert result["final"] == {k: curves[k][-1] for k in CURVE_KEYS - {"step", "epoch", "lr"}}
    data_hash = ToyTask().make_data(0).data_hash()
    assert result["extra"] == {
        "diverged": False,
        "num_params": 50,
        "device": "cpu",
        "data_hash": data_hash,
    }
    assert curves["train_loss"][-1] < curves["train_loss"][0]


def test_step_budget_and_cosine_lr() -> None:
    recorder = Recorder()
    result = train(
        ToyTask(),
        "sgd",
        {"lr": 0.2, "warmup_frac": 0.25},
        0,
        {"steps": 8, "eval_every": 5},
        callbacks=[recorder],
    )
    assert result["curves"]["step"] == [0, 5, 8]
    assert result["curves"]["epoch"] == [0, pytest.approx(5 / 3), pytest.approx(8 / 3)]
    assert recorder.epochs == [1, 2]  # 8 steps = two full passes of 3 batches and 2 more
    factor = lr_factor(8, 0.25, "cosine")
    assert result["curves"]["lr"] == pytest.approx([0.2 * factor(0), 0.2 * factor(5), 0.0])


def test_batches_per_epoch_cap() -> None:
    recorder = Recorder()
    result = train(
        ToyTask(),
        "sgd",
        {"lr": 0.1},
        0,
        {"epochs": 3, "batches_per_epoch": 2},
        callbacks=[recorder],
    )
    assert result["steps"] == 6 and recorder.epochs == [1, 2, 3]
    assert result["curves"]["epoch"] == [0, 1, 2, 3]


def test_p_schedule_for_lpsgd() -> None:
    result = train(ToyTask(), "lpsgdm", {"lr": 0.01, "p_max": 6.0}, 0, {"epochs": 4})
    p = result["curves"]["p"]
    expected = [2 + 4 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(5)]
    assert p == pytest.approx(expected)
    with pytest.raises(ValueError, match="p"):
        train(ToyTask(), "sgdm", {"lr": 0.01, "p_max": 6.0}, 0, {"epochs": 1})


def test_divergence_stops_cleanly() -> None:
    recorder = Recorder()
    result = train(ToyTask(nan_after=3), "sgd", {"lr": 0.1}, 0, {"epochs": 5}, callbacks=[recorder])
    assert result["extra"]["diverged"] is True
    assert result["steps"] == 2 and recorder.steps == [1, 2]
    assert result["curves"]["step"] == [0, 2]  # a last checkpoint where it stopped
    at_once = train(ToyTask(nan_after=1), "sgd", {"lr": 0.1}, 0, {"epochs": 5})
    assert at_once["extra"]["diverged"] and at_once["steps"] == 0
    assert at_once["curves"]["step"] == [0]


def test_reproducible() -> None:
    def strip(result: dict[str, Any]) -> dict[str, Any]:
        curves = {k: v for k, v in result["curves"].items() if k != "time_s"}
        return {"curves": curves, "steps": result["steps"]}

    hp = {"lr": 0.05, "weight_decay": 0.01}
    first = train(ToyTask(), "adamw", hp, 3, {"epochs": 3})
    second = train(ToyTask(), "adamw", hp, 3, {"epochs": 3})
    other = train(ToyTask(), "adamw", hp, 4, {"epochs": 3})
    assert strip(first) == strip(second)
    assert strip(first) != strip(other)


def test_missing_lr() -> None:
    with pytest.raises(ValueError, match="lr"):
        train(ToyTask(), "sgd", {}, 0, {"epochs": 1})


def test_constant_p_schedule_keeps_p_max() -> None:
    result = train(
        ToyTask(), "lpsgdm", {"lr": 0.01, "p_max": 6.0, "p_schedule": "constant"}, 0, {"epochs": 3}
    )
    assert result["curves"]["p"] == [6.0] * 4
    with pytest.raises(ValueError, match="p_schedule"):
        train(
            ToyTask(),
            "lpsgdm",
            {"lr": 0.01, "p_max": 6.0, "p_schedule": "linear"},
            0,
            {"epochs": 1},
        )


class FirstLook:
    """Records the initial weights and the first training mini-batch of a run."""

    def on_train_begin(self, model: nn.Module, optimizer: Any) -> None:
        self.weights = [p.detach().clone() for p in model.parameters()]

        def first_batch(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self.batch = inputs[0].clone()
            handle.remove()

        handle = model.register_forward_pre_hook(first_batch)


def test_pairing_same_seed_same_start_and_first_batch() -> None:
    """Two optimizers with the same seed start from the same weights and see the same first
    batch; another seed changes both."""
    looks = {}
    for name, seed in (("sgdm", 5), ("adamw", 5), ("sgdm", 6)):
        looks[name, seed] = look = FirstLook()
        train(ToyTask(), name, {"lr": 0.01}, seed, {"epochs": 1}, callbacks=[look])
    a, b, c = looks["sgdm", 5], looks["adamw", 5], looks["sgdm", 6]
    assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))
    assert torch.equal(a.batch, b.batch) and a.batch.shape == (4, 3)
    assert not any(torch.equal(x, y) for x, y in zip(a.weights, c.weights, strict=True))
    assert not torch.equal(a.batch, c.batch)


def test_sgdm_rms_matches_lpsgdm_update_rms() -> None:
    """The control's per-step per-tensor update RMS (weight decay aside) equals LPSGDM's."""
    hp = {"lr": 0.02, "p_max": 6.0, "momentum": 0.9, "weight_decay": 0.1}
    budget = {"epochs": 3}
    lp, control = UpdateRMSRecorder(), UpdateRMSRecorder()
    lp_result = train(ToyTask(), "lpsgdm", hp, 2, budget, callbacks=[lp])
    result = train(ToyTask(), "sgdm_rms", hp, 2, budget, callbacks=[control])
    assert len(control.schedule) == len(lp.schedule) == result["steps"] == 9
    # float32: w_new - w_old carries rounding of order 1e-7 * |w| / |step|
    assert torch.tensor(control.schedule) == pytest.approx(torch.tensor(lp.schedule), rel=1e-3)
    assert min(min(row) for row in lp.schedule) > 0
    # same start, a different direction: the trajectories differ
    assert result["curves"]["train_loss"][0] == lp_result["curves"]["train_loss"][0]
    assert result["curves"]["train_loss"][-1] != lp_result["curves"]["train_loss"][-1]
    assert "p" not in result["curves"]
    with pytest.raises(TypeError):  # hparams are checked as the paired LPSGDM run's
        train(ToyTask(), "sgdm_rms", {**hp, "betas": (0.9, 0.99)}, 2, budget)


@pytest.mark.parametrize("moments", ["both", "first"])
def test_agr_relative_change_of_a_one_element_tensor(moments: str) -> None:
    """AGR zeroes a one-element tensor's gradient (in both moments, or in the first only), so
    AdamW (no weight decay) does not move it: the relative change is exactly 1."""
    scalar = nn.Parameter(torch.tensor([0.5]))
    optimizer = create_optimizer([scalar], "adamw_agr", lr=0.1, weight_decay=0.0, moments=moments)
    scalar.grad = torch.tensor([2.0])
    assert step_measuring_agr(optimizer) == 1.0
    assert scalar.item() == 0.5 and optimizer.param_groups[0]["agr_step"] == 1


def test_agr_relative_change_of_equal_magnitudes() -> None:
    """Equal-magnitude gradient entries: AGR scales the gradient by 1 - 1/n, which Adam's first
    step cannot see (relative change 0)."""
    vector = nn.Parameter(torch.zeros(4))
    optimizer = create_optimizer([vector], "adamw_agr", lr=0.1, eps=0.0, weight_decay=0.0)
    vector.grad = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert step_measuring_agr(optimizer) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(vector.detach(), torch.tensor([-0.1, 0.1, -0.1, 0.1]))


def test_agr_relative_change_recorded() -> None:
    result = train(ToyTask(), "adamw_agr", {"lr": 0.01}, 0, {"epochs": 3})
    change = result["extra"]["agr_relative_change"]
    assert 0.0 < change < 1.0
    assert (
        "agr_relative_change"
        not in train(ToyTask(), "adamw", {"lr": 0.01}, 0, {"epochs": 1})["extra"]
    )
