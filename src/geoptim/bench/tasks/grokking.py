"""Grokking on modular addition (SepNorm paper, figure 1; setup of Omnigrok / Nanda et al.).

Data: all pairs ``(a, b)``, ``0 <= a, b < p`` (``p = 113``), label ``(a + b) mod p``; a random
``train_frac`` of the pairs is the training set, the next ``val_frac`` (0.1) the validation set
(what tuning reads), the rest the test set (fixed ``split_seed``); full-batch training, so one
step is one epoch.

Models (option ``model``):

* ``"transformer"``: the canonical one-layer transformer (d_model 128, 4 heads, d_mlp 512, no
  LayerNorm), 30% train split. Paper settings: 15000 steps, AdamW lr 1e-3 betas (0.9, 0.98) wd 1.
  One full-batch step costs ~0.27 s single-thread on CPU; the standard budget is 3000 steps.
* ``"mlp"`` (default; the fast variant): shared embedding of ``a`` and ``b`` (``d_embed`` 32),
  concatenation, one hidden ReLU layer (``width`` 128), 50% train split. Wide enough to memorise
  its training set first; weight decay then drives it to the generalising solution. Quick budget
  400 steps, eval every 10 (~19 ms per full-batch step of 6384 pairs, ~8 s per run single-thread).
  Measured (tuning seed 1000, constant lr): AdamW lr 1e-2 wd 1 reaches train accuracy 0.99 at
  step 140 and test 0.99 at 290. With the tuned settings (train / test reach steps): AdamW lr 0.1
  wd 1: 80 / 80 (no gap at all); Lion lr 3e-2 wd 3: 220 / 270; SepNorm lr 3e-2 wd 3: 180 / 210;
  OrtSepNorm lr 3e-2 wd 0.1: 220 / never (test 0.98 at step 400). The papers' lr 1e-3 does
  nothing within 400 steps.

Extras: ``tau`` (option, default 0.99), ``train_reach_step`` / ``test_reach_step`` (first checkpoint
step with train / test accuracy ``>= tau``, ``None`` if never) and ``gap`` = test minus train reach
step (``None`` unless both are reached).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from geoptim.bench.data import TensorData, modular_addition
from geoptim.bench.models import GrokMLP, GrokTransformer
from geoptim.bench.tasks.base import TrainableTask, option

MODELS = ("mlp", "transformer")


def reach_step(steps: Sequence[int], values: Sequence[float], tau: float) -> int | None:
    """The first ``steps[i]`` with ``values[i] >= tau``, or ``None``."""
    return next((s for s, v in zip(steps, values, strict=True) if v >= tau), None)


def grokking_gap(curves: dict[str, list[Any]], tau: float) -> dict[str, Any]:
    """``{"tau", "train_reach_step", "test_reach_step", "gap"}`` from a result's curves."""
    train = reach_step(curves["step"], curves["train_acc"], tau)
    test = reach_step(curves["step"], curves["test_acc"], tau)
    gap = None if train is None or test is None else test - train
    return {"tau": tau, "train_reach_step": train, "test_reach_step": test, "gap": gap}


@dataclasses.dataclass
class GrokkingTask(TrainableTask):
    name: ClassVar[str] = "grokking"
    description: ClassVar[str] = (
        "(a + b) mod 113, full batch; train/test accuracy every eval_every steps and the grokking "
        "gap (MLP for quick runs, one-layer transformer for the paper's setting)"
    )

    TUNING_METRIC: ClassVar[str] = "val_acc_mean"
    STEP_SECONDS: ClassVar[float] = 0.019  # the MLP
    EVAL_SECONDS: ClassVar[float] = 0.015
    TRANSFORMER_COSTS: ClassVar[tuple[float, float]] = (0.27, 0.32)  # measured under load ~2

    model: str = option("mlp", choices=MODELS)
    p: int = option(113, ge=2)
    train_frac: float | None = option(None, gt=0, lt=1)  # None: 0.5 MLP, 0.3 transformer
    split_seed: int = option(0, ge=0)
    val_frac: float = option(0.1, ge=0, lt=1)
    tau: float = option(0.99, gt=0, le=1)
    d_embed: int = option(32, ge=1)
    width: int = option(128, ge=1)
    d_model: int = option(128, ge=1)
    n_heads: int = option(4, ge=1)
    d_mlp: int = option(512, ge=1)

    def __post_init__(self) -> None:
        if self.train_frac is None:
            self.train_frac = 0.5 if self.model == "mlp" else 0.3

    def costs(self) -> tuple[float, float]:
        if self.model == "transformer":
            return self.TRANSFORMER_COSTS
        return self.STEP_SECONDS, self.EVAL_SECONDS

    def _budgets(self) -> dict[str, dict[str, Any]]:
        if self.model == "mlp":
            return {
                "quick": {"steps": 400, "eval_every": 10},
                "full": {"steps": 3000, "eval_every": 10},
            }
        return {
            "quick": {"steps": 1500, "eval_every": 50},
            "standard": {"steps": 3000, "eval_every": 50},
            "full": {"steps": 15000, "eval_every": 100},
        }

    def _build_model(self) -> nn.Module:
        if self.model == "transformer":
            return GrokTransformer(self.p, self.d_model, self.n_heads, self.d_mlp)
        return GrokMLP(self.p, self.d_embed, self.width)

    def make_data(self, seed: int) -> TensorData:
        assert self.train_frac is not None
        splits = modular_addition(self.p, self.train_frac, self.split_seed, self.val_frac)
        return TensorData.from_splits(splits, batch_size=None, seed=seed, eval_batch_size=16384)

    def extra(self, result: dict[str, Any]) -> dict[str, Any]:
        return grokking_gap(result["curves"], self.tau)
