"""The task registry, every task's ``run`` on a tiny budget, the grokking gap, and the quadratic
task against its closed form."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from geoptim.bench import tasks
from geoptim.bench.tasks.grokking import grokking_gap, reach_step
from geoptim.bench.tasks.quadratic import PROBLEMS
from tests.bench.test_data import CURVE_KEYS, write_fake_cifar

ALL = [
    *("quadratic", "grokking", "digits", "mnist1d", "vit", "ddpm", "charlm", "cifar10", "cifar100"),
    *("tinyimagenet", "imagenet"),
]


# ---------------------------------------------------------------- registry


def test_registry() -> None:
    assert tasks.list_tasks() == ALL
    for name in ALL:
        task = tasks.get_task(name)
        assert task.name == name and task.description
        for suite in ("quick", "standard", "full"):
            budget = task.default_budget(suite)
            assert ("epochs" in budget) != ("steps" in budget)
        with pytest.raises(ValueError, match="quick"):
            task.default_budget("medium")


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="known tasks: quadratic, grokking"):
        tasks.get_task("imagenet21k")
    with pytest.raises(ValueError, match=r"no option 'depth'.*activation"):
        tasks.get_task("digits", depth=3)
    with pytest.raises(ValueError, match="unknown model 'resnet9'"):
        tasks.get_task("cifar10", model="resnet9")
    with pytest.raises(ValueError, match="unknown activation"):
        tasks.get_task("digits", activation="tanh")
    with pytest.raises(ValueError, match="unknown problem"):
        tasks.get_task("quadratic", problem="medium")


def test_overrides_change_budgets_and_models() -> None:
    mlp, transformer = tasks.get_task("grokking"), tasks.get_task("grokking", model="transformer")
    assert mlp.train_frac == 0.5 and transformer.train_frac == 0.3
    assert transformer.default_budget("full") == {"steps": 15000, "eval_every": 100}
    assert transformer.default_budget("standard") == {"steps": 3000, "eval_every": 50}
    assert mlp.default_budget("standard") == mlp.default_budget("quick")
    assert type(transformer.make_model(0)).__name__ == "GrokTransformer"
    assert type(tasks.get_task("digits", model="vgg").make_model(0)).__name__ == "DigitsVGG"
    leaky = tasks.get_task("digits", activation="leaky_relu").make_model(0)
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in leaky.modules())


def test_make_model_is_seeded() -> None:
    task = tasks.get_task("mnist1d")
    first, second, other = task.make_model(5), task.make_model(5), task.make_model(6)
    pairs = list(zip(first.parameters(), second.parameters(), other.parameters()))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


def test_splits_fixed_and_hashed() -> None:
    """Every CPU task's splits are the same for every run seed (the seed orders batches only),
    the data hash names them, and an option that changes the data changes the hash."""
    small = {"num_samples": 500, "n_val": 50}
    for name in ("grokking", "digits", "mnist1d"):
        task = tasks.get_task(name, **(small if name == "mnist1d" else {}))
        first, other = task.make_data(0), task.make_data(7)
        assert torch.equal(first.x_test, other.x_test) and torch.equal(first.y_train, other.y_train)
        assert first.val is not None and len(first.val[1]) > 0
        assert task.data_hash() == first.data_hash() == other.data_hash()
    changed = {
        "grokking": {"split_seed": 1},
        "digits": {"label_noise": 0.1},
        "quadratic": {"problem": "weak"},
        "mnist1d": {"num_samples": 500, "n_val": 40},
    }
    for name, options in changed.items():
        base = tasks.get_task(name, **(small if name == "mnist1d" else {}))
        assert base.data_hash() != tasks.get_task(name, **options).data_hash()


def test_estimated_seconds() -> None:
    for name in ("quadratic", "grokking", "digits", "mnist1d"):
        task = tasks.get_task(name)
        quick, full = (task.estimated_seconds(task.default_budget(s)) for s in ("quick", "full"))
        assert 0 < quick < full
    digits = tasks.get_task("digits")
    steps, checkpoints = digits.budget_steps({"epochs": 2})
    assert (steps, checkpoints) == (10, 2)
    expected = 10 * digits.STEP_SECONDS + 3 * digits.EVAL_SECONDS
    assert digits.estimated_seconds({"epochs": 2}) == pytest.approx(expected)
    assert digits.estimated_seconds({"epochs": 2}, "sgdm_rms") == pytest.approx(2 * expected)


# ---------------------------------------------------------------- grokking gap


def test_grokking_gap_on_constructed_curves() -> None:
    curves = {
        "step": [0, 10, 20, 30, 40, 50],
        "train_acc": [0.0, 0.5, 0.995, 1.0, 1.0, 1.0],
        "test_acc": [0.0, 0.0, 0.1, 0.98, 0.99, 1.0],
    }
    assert grokking_gap(curves, 0.99) == {
        "tau": 0.99,
        "train_reach_step": 20,
        "test_reach_step": 40,
        "gap": 20,
    }
    assert grokking_gap(curves, 0.9)["gap"] == 10
    never = grokking_gap({**curves, "test_acc": [0.0] * 6}, 0.99)
    assert never["train_reach_step"] == 20 and never["test_reach_step"] is None
    assert never["gap"] is None
    assert reach_step([0, 1], [0.2, 0.3], 0.5) is None


# ---------------------------------------------------------------- quadratic


def _gd_closed_form(
    lam: tuple[float, float], w0: tuple[float, float], lr: float, target: float, steps: int
) -> int | None:
    for k in range(steps + 1):
        loss = sum(0.5 * l * ((1 - lr * l) ** k * w) ** 2 for l, w in zip(lam, w0))
        if loss <= target:
            return k
    return None


@pytest.mark.parametrize(("problem", "lr"), [("strong", 1.5), ("strong", 0.7), ("weak", 0.3)])
def test_quadratic_gd_matches_closed_form(problem: str, lr: float) -> None:
    task = tasks.get_task("quadratic", problem=problem)
    result = task.run("sgd", {"lr": lr}, 0, {"steps": 600})
    lam, w0 = PROBLEMS[problem], task.w0
    loss0 = 0.5 * (lam[0] * w0[0] ** 2 + lam[1] * w0[1] ** 2)
    extra = result["extra"]
    assert extra["target_loss"] == pytest.approx(1e-3 * loss0)
    expected = _gd_closed_form(lam, w0, lr, extra["target_loss"], 600)
    assert expected is not None and extra["steps_to_target"] == expected
    traj = np.array(extra["trajectory"])
    k = np.arange(len(traj))[:, None]
    closed = (1 - lr * np.array(lam)) ** k * np.array(w0)
    np.testing.assert_allclose(traj, closed, rtol=1e-9, atol=1e-14)
    assert result["curves"]["train_loss"][0] == pytest.approx(loss0)
    assert len(result["curves"]["step"]) == 601 == len(traj)


def test_quadratic_signgd_and_lp() -> None:
    task = tasks.get_task("quadratic")
    sign = task.run("signsgd", {"lr": 0.01}, 0, {"steps": 5})
    steps = np.diff(np.array(sign["extra"]["trajectory"]), axis=0)
    np.testing.assert_allclose(steps, -0.01, rtol=1e-12)  # both coordinates positive
    gd = task.run("sgd", {"lr": 0.3}, 0, {"steps": 20})
    lp2 = task.run("lpsgd", {"lr": 0.3, "p": 2.0}, 0, {"steps": 20})
    np.testing.assert_allclose(lp2["extra"]["trajectory"], gd["extra"]["trajectory"], rtol=1e-6)
    assert set(sign["extra"]) == {
        "trajectory",
        "steps_to_target",
        "target_loss",
        "problem",
        "diverged",
        "data_hash",
    }
    assert sign["extra"]["data_hash"] == task.data_hash()
    assert sign["extra"]["problem"] == "strong"
    weak = task.run("sgd", {"lr": 0.3}, 0, {"steps": 3, "problem": "weak"})
    assert weak["extra"]["problem"] == "weak"


def test_quadratic_divergence_and_p_schedule() -> None:
    task = tasks.get_task("quadratic")
    blown = task.run("sgd", {"lr": 1e200}, 0, {"steps": 50})
    assert blown["extra"]["diverged"] is True and blown["steps"] < 50
    assert all(math.isfinite(v) for v in blown["curves"]["train_loss"])
    scheduled = task.run("lpsgd", {"lr": 0.05, "p_max": 8.0}, 0, {"steps": 10})
    assert not scheduled["extra"]["diverged"] and scheduled["steps"] == 10


def test_quadratic_refuses_the_step_size_control() -> None:
    with pytest.raises(ValueError, match="trainable tasks only"):
        tasks.get_task("quadratic").run("sgdm_rms", {"lr": 0.1, "p_max": 6.0}, 0, {"steps": 2})


def test_quadratic_callbacks() -> None:
    seen: list[tuple[int, int]] = []

    class Cb:
        def on_step(self, step: int, model: Any, optimizer: Any, loss: float) -> None:
            seen.append((step, sum(p.numel() for p in model.parameters())))

    tasks.get_task("quadratic").run("sgd", {"lr": 0.1}, 0, {"steps": 4}, callbacks=[Cb()])
    assert seen == [(1, 2), (2, 2), (3, 2), (4, 2)]


# ---------------------------------------------------------------- tiny runs of every task


def _check_classification_result(result: dict[str, Any], steps: int) -> None:
    assert set(result) == {"curves", "final", "steps", "extra"}
    curves = result["curves"]
    assert set(curves) >= CURVE_KEYS
    assert len({len(v) for v in curves.values()}) == 1
    assert result["steps"] == steps == curves["step"][-1]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "time_s"} <= set(result["final"])
    assert all(0.0 <= a <= 1.0 for a in curves["test_acc"])
    assert result["extra"]["diverged"] is False


def test_grokking_tiny_runs() -> None:
    task = tasks.get_task("grokking")
    result = task.run("adamw", {"lr": 1e-2, "weight_decay": 1.0}, 0, {"steps": 4, "eval_every": 2})
    _check_classification_result(result, 4)
    assert result["curves"]["step"] == [0, 2, 4]
    assert set(result["extra"]) >= {"tau", "train_reach_step", "test_reach_step", "gap"}
    assert result["extra"]["tau"] == 0.99
    again = task.run("adamw", {"lr": 1e-2, "weight_decay": 1.0}, 0, {"steps": 4, "eval_every": 2})
    assert again["curves"]["train_loss"] == result["curves"]["train_loss"]
    x, y = task.make_data(0).hessian_batch(16)
    assert x.shape == (16, 2) and torch.equal(y, x.sum(1) % 113)

    transformer = tasks.get_task("grokking", model="transformer", tau=0.5)
    result = transformer.run("adamw", {"lr": 1e-3}, 0, {"steps": 2, "eval_every": 1})
    _check_classification_result(result, 2)
    assert result["extra"]["tau"] == 0.5


@pytest.mark.parametrize(("model", "activation"), [("resnet", "leaky_relu"), ("vgg", "relu")])
def test_digits_tiny_run(model: str, activation: str) -> None:
    task = tasks.get_task("digits", model=model, activation=activation)
    epochs: list[int] = []

    class Cb:
        def on_epoch_end(self, epoch: int, model: Any, optimizer: Any) -> None:
            epochs.append(epoch)

    budget = {"epochs": 2, "batches_per_epoch": 3}
    result = task.run("sgdm", {"lr": 0.05}, 0, budget, callbacks=[Cb()])
    _check_classification_result(result, 6)
    assert epochs == [1, 2] and result["curves"]["epoch"] == [0, 1, 2]
    assert task.make_data(0).steps_per_epoch == math.ceil(300 / 64)
    assert task.make_data(0).hessian_batch(32)[0].shape == (32, 1, 8, 8)


def test_mnist1d_tiny_run() -> None:
    task = tasks.get_task("mnist1d", num_samples=500, n_val=50)
    result = task.run("adamw", {"lr": 3e-3}, 1, {"epochs": 1, "batches_per_epoch": 2})
    _check_classification_result(result, 2)
    assert task.make_data(0).hessian_batch(8)[0].shape == (8, 1, 40)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_tiny_run(tmp_path: Path, name: str) -> None:
    write_fake_cifar(tmp_path, name, per_file=2 if name == "cifar10" else 10)
    task = tasks.get_task(
        name, data_dir=str(tmp_path), model="vgg11", batch_size=4, device="cpu", n_val=2
    )
    data = task.make_data(0)
    assert data.steps_per_epoch == 2 and data.x_train.dtype == torch.float32
    assert data.val is not None and len(data.val[1]) == 2
    result = task.run("sgdm", {"lr": 0.01}, 0, {"epochs": 1})
    _check_classification_result(result, 2)
    assert result["extra"]["num_params"] == (9_231_114 if name == "cifar10" else 9_277_284)


def test_cifar_missing_data_message(tmp_path: Path) -> None:
    task = tasks.get_task("cifar10", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        task.run("sgdm", {"lr": 0.1}, 0, {"epochs": 1})


@pytest.mark.slow
def test_grokking_quick_budget_groks() -> None:
    """The documented quick setting: train accuracy saturates well before test accuracy."""
    task = tasks.get_task("grokking")
    hparams = {"lr": 1e-2, "betas": (0.9, 0.98), "weight_decay": 1.0, "lr_schedule": "constant"}
    result = task.run("adamw", hparams, 0, task.default_budget("quick"))
    extra = result["extra"]
    assert extra["gap"] is not None and extra["gap"] >= 80
    at_train_reach = result["curves"]["step"].index(extra["train_reach_step"])
    assert result["curves"]["test_acc"][at_train_reach] < 0.3
