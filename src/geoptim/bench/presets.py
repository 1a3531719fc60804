"""Hyper-parameter presets: the papers' settings per (task, optimizer), and tuned ones.

A preset is the ``hparams`` dict a task's ``run`` takes: ``lr``, ``weight_decay``,
``warmup_frac``, ``lr_schedule`` (``"cosine"`` or ``"constant"``), ``p_max`` for the l_p methods,
and any optimizer keyword (``betas``, ``momentum``, ...). Every preset has a ``provenance``: how it
was chosen. :class:`Presets` looks them up, and every record carries the provenance of the preset
it ran with (``config["preset_provenance"]``).

Two sources (``geoptim bench --presets tuned|paper``):

* **tuned** (the default): chosen by ``geoptim tune`` (:mod:`geoptim.bench.tune`) on the
  *validation* split, with tuning seeds >= 1000 that no benchmark run uses. The shipped ones are
  :data:`SHIPPED_FILE` (``tuned_presets.json``, one entry per (task, optimizer), each with its
  search space, trials, seeds, budget, metric, date and data hash); presets tuned into
  ``DIR/presets`` replace them. Where no tuned preset exists, the paper preset is used and labelled
  as such.
* **paper**: the papers' own values, with the citation as provenance:

  - LPSGD paper, hyper-parameter tables (CIFAR-10/100, VGG-11 / ResNet-18): SGD-momentum lr 0.1,
    AdamW lr 1e-3 wd 0.1, LPSGDM lr 1e-3 p_max 6 momentum 0.9 wd 1e-2, warmup + cosine decay;
    the small CPU tasks (``digits``, ``mnist1d``) take these CIFAR values unchanged.
  - SepNorm paper, table 4 (grokking, one-layer transformer, 15000 steps, no schedule): AdamW lr
    1e-3 betas (0.9, 0.98) wd 1; Lion and SepNorm lr 1e-3 betas (0.9, 0.99) wd 5; OrtSepNorm wd
    0.1; the grokking MLP takes the same values.
  - Lion's rule of thumb (SepNorm paper tables 5-6): lr 3-10x smaller and wd 3-10x larger than
    AdamW's; the sign-like methods (SepNorm, Signum) follow Lion.
  - Adan's recommended betas (0.98, 0.92, 0.99) and wd 0.02.
  - Quadratic (LPSGD paper fig. 3): no momentum, no weight decay, constant lr; the lrs are the
    project's (the paper's matrices are lost), per method the one reaching the target fastest on
    the ``strong`` problem (deterministic: there is no seed and no test data).

AGR variants take their base optimizer's preset (as in the AGR paper), and ``sgdm_rms`` (the
step-size control of :mod:`geoptim.bench.training`) takes LPSGDM's, which it needs to replay the
paired LPSGDM run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geoptim.bench.records import task_label, write_json_atomic

PRESETS_SUBDIR = "presets"
SHIPPED_FILE = Path(__file__).with_name("tuned_presets.json")
PRESET_BASE = {"adamw_agr": "adamw", "adan_agr": "adan", "sgdm_rms": "lpsgdm"}
"""Optimizers that take another optimizer's preset."""

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
    "sgdm_rms": {"lr": 1e-3, "p_max": 6, "momentum": 0.9, "weight_decay": 1e-2},
}
"""Per optimizer, the settings every task starts from (warmup + cosine decay added)."""

TASK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "grokking": {  # the paper's setting, table 4 (both models)
        "*": {"lr_schedule": "constant", "warmup_frac": 0.0, "lr": 1e-3, "weight_decay": 1.0},
        "adamw": {"betas": (0.9, 0.98)},
        "lion": {"betas": (0.9, 0.99), "weight_decay": 5.0},
        "sepnorm": {"betas": (0.9, 0.99), "weight_decay": 5.0},
        "ortsepnorm": {"betas": (0.9, 0.99), "weight_decay": 0.1},
    },
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

CITATIONS = {
    "grokking": "SepNorm paper, table 4 (one-layer transformer)",
    "quadratic": "LPSGD paper, fig. 3 setting; lrs the project's (fastest to target, strong)",
    "cifar10": "LPSGD paper, hyper-parameter tables (CIFAR-10)",
    "cifar100": "LPSGD paper, hyper-parameter tables (CIFAR-100)",
}
DEFAULT_CITATION = "LPSGD paper's CIFAR settings (SepNorm paper's Lion rule; Adan's defaults)"


def paper_preset(
    task: str, optimizer: str, task_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The papers' hyper-parameters for ``optimizer`` on ``task`` (a fresh dict); a task
    variant (``grokking[model=transformer]``) has its own entry or falls back to the task's."""
    if optimizer not in DEFAULT_PRESETS:
        raise KeyError(f"no preset for optimizer {optimizer!r}")
    per_task = TASK_PRESETS.get(task_label(task, task_overrides or {}), TASK_PRESETS.get(task, {}))
    base = PRESET_BASE.get(optimizer, optimizer)
    return {
        **_SCHEDULE,
        **DEFAULT_PRESETS[optimizer],
        **per_task.get("*", {}),
        **per_task.get(optimizer, per_task.get(base, {})),
    }


def paper_provenance(task: str, optimizer: str) -> dict[str, Any]:
    """The provenance of a paper preset."""
    return {
        "source": "paper",
        "citation": CITATIONS.get(task, DEFAULT_CITATION),
        "optimizer": PRESET_BASE.get(optimizer, optimizer),
    }


def preset_filename(task: str, task_overrides: dict[str, Any], optimizer: str) -> str:
    return f"{task_label(task, task_overrides)}__{optimizer}.json"


def save_tuned(
    folder: str | Path,
    task: str,
    task_overrides: dict[str, Any],
    optimizer: str,
    hparams: dict[str, Any],
    provenance: dict[str, Any],
) -> Path:
    """Write a tuned preset with its ``provenance`` and return its path."""
    path = Path(folder) / preset_filename(task, task_overrides, optimizer)
    data = {
        "task": task,
        "task_overrides": task_overrides,
        "optimizer": optimizer,
        "hparams": hparams,
        "provenance": provenance,
    }
    write_json_atomic(path, data)
    return path


def check_preset(data: Any, where: str) -> dict[str, Any]:
    """``data`` if it is a well-formed tuned preset; ``ValueError`` naming ``where`` if not."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} does not hold a JSON object")
    for key, kind in (("task", str), ("optimizer", str), ("hparams", dict), ("provenance", dict)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"{where} lacks {key!r} ({kind.__name__})")
    data.setdefault("task_overrides", {})
    return data


def load_preset_file(path: str | Path) -> dict[str, Any]:
    """Read and check one preset file; raise ``ValueError`` with the reason when it is bad. A
    hand-written file without ``provenance`` gets ``{"source": "preset file", "file": path}``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"cannot read preset file {path}: {err}") from err
    except ValueError as err:
        raise ValueError(f"preset file {path} is not valid JSON: {err}") from err
    if isinstance(data, dict):
        data.setdefault("provenance", {"source": "preset file", "file": str(path)})
    return check_preset(data, f"preset file {path}")


def shipped_presets() -> list[dict[str, Any]]:
    """The tuned presets shipped with the package (:data:`SHIPPED_FILE`)."""
    entries = json.loads(SHIPPED_FILE.read_text(encoding="utf-8"))["presets"]
    return [
        check_preset(entry, f"{SHIPPED_FILE.name} entry {i}") for i, entry in enumerate(entries)
    ]


def load_presets(
    choice: str, folder: str | Path | None = None, files: Iterable[str | Path] = ()
) -> Presets:
    """The presets ``geoptim bench --presets CHOICE`` uses: ``"paper"`` (only the papers'),
    or ``"tuned"``: the shipped tuned presets, replaced by those in ``folder`` (``DIR/presets``)
    and then by ``files``."""
    if choice not in ("paper", "tuned"):
        raise ValueError(f"unknown presets {choice!r}; known: paper, tuned")
    tuned: list[dict[str, Any]] = []
    if choice == "tuned":
        tuned = shipped_presets()
        if folder is not None:
            tuned += [load_preset_file(path) for path in sorted(Path(folder).glob("*.json"))]
    tuned += [load_preset_file(path) for path in files]
    return Presets(tuned)


class Presets:
    """Looks up hyper-parameters and their provenance: a tuned preset when one is loaded for the
    (task variant, optimizer) or its :data:`PRESET_BASE`, else the paper's. Later entries of
    ``tuned`` replace earlier ones."""

    def __init__(self, tuned: Iterable[dict[str, Any]] = ()) -> None:
        self._tuned: dict[tuple[str, str], dict[str, Any]] = {}
        for data in tuned:
            key = (task_label(data["task"], data["task_overrides"]), data["optimizer"])
            self._tuned[key] = data

    def _find(
        self, task: str, task_overrides: dict[str, Any], optimizer: str
    ) -> dict[str, Any] | None:
        label = task_label(task, task_overrides)
        found = self._tuned.get((label, optimizer))
        if found is None and optimizer in PRESET_BASE:
            found = self._tuned.get((label, PRESET_BASE[optimizer]))
        return found

    def hparams(self, task: str, task_overrides: dict[str, Any], optimizer: str) -> dict[str, Any]:
        tuned = self._find(task, task_overrides, optimizer)
        if tuned is None:
            return paper_preset(task, optimizer, task_overrides)
        return dict(tuned["hparams"])

    def source(self, task: str, task_overrides: dict[str, Any], optimizer: str) -> str:
        """``"tuned"`` or ``"paper"``."""
        return "paper" if self._find(task, task_overrides, optimizer) is None else "tuned"

    def provenance(
        self, task: str, task_overrides: dict[str, Any], optimizer: str
    ) -> dict[str, Any]:
        """How the preset of ``hparams`` was chosen (a fresh dict)."""
        tuned = self._find(task, task_overrides, optimizer)
        if tuned is None:
            return paper_provenance(task, optimizer)
        return {**tuned["provenance"], "optimizer": tuned["optimizer"]}
