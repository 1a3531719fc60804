"""Hyper-parameter presets: the papers' settings per (task, optimizer), and tuned ones.

A preset is the ``hparams`` dict a task's ``run`` takes: ``lr``, ``weight_decay``,
``warmup_frac``, ``lr_schedule`` (``"cosine"`` or ``"constant"``), ``p_max`` for the l_p methods,
and any optimizer keyword (``betas``, ``momentum``, ...).

Sources (the update rules: ``docs/algorithms.md``; the papers it cites):

* LPSGD paper, hyper-parameter tables (CIFAR-10/100, VGG-11 / ResNet-18): SGD-momentum lr 0.1,
  AdamW lr 1e-3 wd 0.1, LPSGDM lr 1e-3 p_max 6 momentum 0.9 wd 1e-2, warmup + cosine decay.
* SepNorm paper, table 4 (grokking, one-layer transformer, 15000 steps, no schedule): AdamW lr
  1e-3 betas (0.9, 0.98) wd 1; Lion and SepNorm lr 1e-3 betas (0.9, 0.99) wd 5; OrtSepNorm wd
  0.1 (``grokking[model=transformer]``). The quick suite's grokking MLP does nothing within its
  800 steps at lr 1e-3; there every method gets lr 1e-2, AdamW wd 1, OrtSepNorm the paper's
  wd 0.1, and Lion and SepNorm, as in the paper, a larger wd than AdamW: 2, the smallest of
  (0.5, 1, 2, 3) at which both generalise within the budget (seed 0, not a benchmark seed; at
  wd 5 they do not even fit the training set in time).
* Lion's rule of thumb (SepNorm paper tables 5-6): lr 3-10x smaller and wd 3-10x larger than
  AdamW's, so that ``lr * wd`` matches; the sign-like methods (SepNorm, Signum) follow Lion.
* Adan's recommended betas (0.98, 0.92, 0.99) and wd 0.02; AGR variants reuse their base's.
* Quadratic (LPSGD paper fig. 3, SepNorm paper section 5): no momentum, no weight decay,
  constant lr; per method the lr that reaches the target loss fastest on the ``strong`` problem
  within the quick budget (GD just under its stability limit 2 / lambda_max).

The small CPU tasks (``digits``, ``mnist1d``) keep the CIFAR settings' weight decay, momentum and
betas; their learning rates were chosen the papers' way, by a search: lr x (0.3, 1, 3, 10, 30)
around the CIFAR value, one run each (seed 1000, not a benchmark seed) at the quick budget, the
best final test accuracy kept (extended upward where the best was at the edge). AGR variants use
their base optimizer's setting, as in the AGR paper; SepNorm, OrtSepNorm and Signum use Lion's lr
(SepNorm's best lr equalled Lion's on both tasks).

Tuned presets are JSON files ``<dir>/<task label>__<optimizer>.json`` written by ``geoptim tune``
(see :func:`save_tuned`); a tuned preset replaces the paper preset for its (task, optimizer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geoptim.bench.records import task_label, write_json_atomic

PRESETS_SUBDIR = "presets"

_SCHEDULE = {"warmup_frac": 0.05, "lr_schedule": "cosine"}

DEFAULT_PRESETS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.1, "weight_decay": 1e-3},
    "sgdm": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.1},
    "adamw_agr": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.1},
    "adan": {"lr": 1e-3, "betas": (0.98, 0.92, 0.99), "weight_decay": 0.02},
    "adan_agr": {"lr": 1e-3, "betas": (0.98, 0.92, 0.99), "weight_decay": 0.02},
    "lion": {"lr": 3e-4, "betas": (0.9, 0.99), "weight_decay": 0.3},
    "sepnorm": {"lr": 3e-4, "betas": (0.9, 0.99), "weight_decay": 0.3},
    "ortsepnorm": {"lr": 3e-4, "betas": (0.9, 0.99), "weight_decay": 0.1},
    "normsgd": {"lr": 0.05, "betas": (0.9, 0.99), "weight_decay": 0.0},
    "signum": {"lr": 3e-4, "momentum": 0.9, "weight_decay": 0.3},
    "signsgd": {"lr": 3e-4, "weight_decay": 0.3},
    "lpsgd": {"lr": 1e-3, "p_max": 6, "weight_decay": 1e-2},
    "lpsgdm": {"lr": 1e-3, "p_max": 6, "momentum": 0.9, "weight_decay": 1e-2},
}
"""Per optimizer, the settings every task starts from (warmup + cosine decay added)."""

def _small_task(sgdm: float, lpsgdm: float, adamw: float, adan: float, lion: float
                ) -> dict[str, dict[str, Any]]:
    """Learning rates for a small CPU task; the sign-like methods take Lion's."""
    return {
        "sgdm": {"lr": sgdm},
        "lpsgdm": {"lr": lpsgdm},
        "adamw": {"lr": adamw},
        "adan": {"lr": adan},
        **{name: {"lr": lion} for name in ("lion", "sepnorm", "ortsepnorm", "signum")},
    }


TASK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "grokking": {  # the fast MLP variant (quick budget 400 steps): lr x10, see module doc
        "*": {"lr_schedule": "constant", "warmup_frac": 0.0, "lr": 1e-2, "weight_decay": 1.0},
        "adamw": {"betas": (0.9, 0.98)},
        "lion": {"betas": (0.9, 0.99), "weight_decay": 2.0},
        "sepnorm": {"betas": (0.9, 0.99), "weight_decay": 2.0},
        "ortsepnorm": {"betas": (0.9, 0.99), "weight_decay": 0.1},
    },
    "grokking[model=transformer]": {  # the paper's setting, table 4
        "*": {"lr_schedule": "constant", "warmup_frac": 0.0, "lr": 1e-3, "weight_decay": 1.0},
        "adamw": {"betas": (0.9, 0.98)},
        "lion": {"betas": (0.9, 0.99), "weight_decay": 5.0},
        "sepnorm": {"betas": (0.9, 0.99), "weight_decay": 5.0},
        "ortsepnorm": {"betas": (0.9, 0.99), "weight_decay": 0.1},
    },
    "digits": _small_task(sgdm=0.03, lpsgdm=0.01, adamw=0.01, adan=0.01, lion=3e-3),
    "mnist1d": _small_task(sgdm=0.1, lpsgdm=0.03, adamw=0.03, adan=0.01, lion=9e-3),
    "quadratic": {
        "*": {"lr_schedule": "constant", "warmup_frac": 0.0, "weight_decay": 0.0},
        "sgd": {"lr": 1.9},
        "signsgd": {"lr": 0.03},
        "normsgd": {"lr": 0.03, "betas": (0.0, 0.0)},
        "sepnorm": {"lr": 0.01, "betas": (0.0, 0.0)},
        "lpsgd": {"lr": 0.1, "p_max": 6},
    },
    "cifar10": {
        "sgdm": {"lr": 0.1, "weight_decay": 1e-3},
        "adamw": {"lr": 1e-3, "weight_decay": 0.1},
        "lion": {"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 1e-3},
        "lpsgdm": {"lr": 1e-3, "p_max": 6, "weight_decay": 1e-2},
    },
    "cifar100": {
        "sgdm": {"lr": 0.1, "weight_decay": 1e-2},
        "adamw": {"lr": 1e-2, "weight_decay": 0.1},
        "lion": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.1},
        "lpsgdm": {"lr": 1e-2, "p_max": 6, "weight_decay": 0.1},
    },
}
"""Per task, overrides of :data:`DEFAULT_PRESETS`; ``"*"`` applies to every optimizer."""


def paper_preset(task: str, optimizer: str, task_overrides: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The papers' hyper-parameters for ``optimizer`` on ``task`` (a fresh dict); a task
    variant (``grokking[model=transformer]``) has its own entry or falls back to the task's."""
    if optimizer not in DEFAULT_PRESETS:
        raise KeyError(f"no preset for optimizer {optimizer!r}")
    per_task = TASK_PRESETS.get(task_label(task, task_overrides or {}),
                                TASK_PRESETS.get(task, {}))
    base = optimizer.removesuffix("_agr")  # an AGR variant takes its base's task settings
    return {
        **_SCHEDULE,
        **DEFAULT_PRESETS[optimizer],
        **per_task.get("*", {}),
        **per_task.get(optimizer, per_task.get(base, {})),
    }


def preset_filename(task: str, task_overrides: dict[str, Any], optimizer: str) -> str:
    return f"{task_label(task, task_overrides)}__{optimizer}.json"


def save_tuned(
    folder: str | Path,
    task: str,
    task_overrides: dict[str, Any],
    optimizer: str,
    hparams: dict[str, Any],
    info: dict[str, Any],
) -> Path:
    """Write a tuned preset (with how it was found, ``info``) and return its path."""
    path = Path(folder) / preset_filename(task, task_overrides, optimizer)
    data = {
        "task": task,
        "task_overrides": task_overrides,
        "optimizer": optimizer,
        "hparams": hparams,
        **info,
    }
    write_json_atomic(path, data)
    return path


def load_preset_file(path: str | Path) -> dict[str, Any]:
    """Read and check one preset file; raise ``ValueError`` with the reason when it is bad."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"cannot read preset file {path}: {err}") from err
    except ValueError as err:
        raise ValueError(f"preset file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"preset file {path} does not hold a JSON object")
    for key, kind in (("task", str), ("optimizer", str), ("hparams", dict)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"preset file {path} lacks {key!r} ({kind.__name__})")
    data.setdefault("task_overrides", {})
    return data


class Presets:
    """Looks up hyper-parameters: a tuned preset when one is loaded, else the paper's."""

    def __init__(self, tuned: Iterable[dict[str, Any]] = ()) -> None:
        self._tuned: dict[tuple[str, str], dict[str, Any]] = {}
        for data in tuned:
            key = (task_label(data["task"], data["task_overrides"]), data["optimizer"])
            self._tuned[key] = dict(data["hparams"])

    def hparams(self, task: str, task_overrides: dict[str, Any], optimizer: str) -> dict[str, Any]:
        tuned = self._tuned.get((task_label(task, task_overrides), optimizer))
        return dict(tuned) if tuned is not None else paper_preset(task, optimizer, task_overrides)

    def source(self, task: str, task_overrides: dict[str, Any], optimizer: str) -> str:
        key = (task_label(task, task_overrides), optimizer)
        return "tuned" if key in self._tuned else "paper"
