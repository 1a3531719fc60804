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

  - The GPU tasks (CIFAR-10/100, ImageNet, Tiny-ImageNet) take theirs from :data:`PAPER_TABLES`,
    one entry per task *and architecture* (the options a task lists in ``PRESET_OPTIONS``:
    ``cifar100[model=vgg11]``, ``imagenet[batch_size=256,model=resnet50]``), with the table it
    comes from. Nothing is shared between architectures: a (task, architecture, optimizer) the
    tables do not give raises :class:`MissingPreset` (``geoptim bench --dry-run`` names it).
    LPSGD paper, tables 4-6 (CIFAR-10, CIFAR-100, ImageNet: SGD-momentum, AdamW, Lion, LPSGDM,
    batch 128, warmup + cosine decay); plain SGD and LPSGD (its fig. 2) take the SGDM and LPSGDM
    values with momentum 0, the paper giving none of their own. AGR paper, section 5.1/5.3 (CIFAR-
    100 ResNet-101 and Tiny-ImageNet): AdamW at its defaults (lr 1e-3, betas (0.9, 0.999), wd
    1e-2); on the CIFAR-100 models the LPSGD paper tunes, AdamW and AdamW-AGR run at its table-5
    AdamW values (one preset per key). SepNorm paper, table 5 (ImageNet ResNet-50, batch 256,
    5 warmup epochs of 100, cosine): AdamW, Lion and SepNorm; its table 2's batch sizes 64 and 512
    scale the lr linearly and keep the weight decay.
  - The small CPU tasks (``digits``, ``mnist1d``, ...) take the LPSGD paper's CIFAR values
    unchanged: SGD-momentum lr 0.1, AdamW lr 1e-3 wd 0.1, LPSGDM lr 1e-3 p_max 6 momentum 0.9 wd
    1e-2, warmup + cosine decay.
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

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geoptim.bench.records import task_label, write_json_atomic

PRESETS_SUBDIR = "presets"
SHIPPED_FILE = Path(__file__).with_name("tuned_presets.json")
PRESET_BASE = {"adamw_agr": "adamw", "adan_agr": "adan", "sgdm_rms": "lpsgdm"}
"""Optimizers that take another optimizer's preset."""
CIFAR_MODEL_NAMES = ("resnet18", "resnet50", "resnet101", "vgg11")

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
}
"""Per task, overrides of :data:`DEFAULT_PRESETS`; ``"*"`` applies to every optimizer."""

CITATIONS = {
    "grokking": "SepNorm paper, table 4 (one-layer transformer)",
    "quadratic": "LPSGD paper, fig. 3 setting; lrs the project's (fastest to target, strong)",
}
DEFAULT_CITATION = "LPSGD paper's CIFAR settings (SepNorm paper's Lion rule; Adan's defaults)"


class MissingPreset(ValueError):
    """A GPU task's (task, architecture, optimizer) that :data:`PAPER_TABLES` does not give."""


def _lpsgd_table(
    citation: str,
    sgdm: tuple[float, float],
    adamw: tuple[float, float],
    lion: tuple[float, float],
    lpsgdm: tuple[float, float, float],
    lion_beta2: float = 0.999,
) -> dict[str, Any]:
    """One model's row block of the LPSGD paper's tables 4-6: ``(lr, wd)`` per optimizer and
    ``(p_max, lr, wd)`` for LPSGDM; momentum 0.9, AdamW betas (0.9, 0.999), Lion betas (0.9,
    ``lion_beta2``). SGD and LPSGD (fig. 2) are SGDM and LPSGDM with momentum 0."""
    p_max, lp_lr, lp_wd = lpsgdm
    return {
        "citation": citation,
        "sgdm": {"lr": sgdm[0], "momentum": 0.9, "weight_decay": sgdm[1]},
        "sgd": {"lr": sgdm[0], "weight_decay": sgdm[1]},
        "adamw": {"lr": adamw[0], "betas": (0.9, 0.999), "weight_decay": adamw[1]},
        "lion": {"lr": lion[0], "betas": (0.9, lion_beta2), "weight_decay": lion[1]},
        "lpsgdm": {"lr": lp_lr, "p_max": p_max, "momentum": 0.9, "weight_decay": lp_wd},
        "lpsgd": {"lr": lp_lr, "p_max": p_max, "weight_decay": lp_wd},
    }


AGR_ADAMW = {
    "citation": "AGR paper, sections 5.1 and 5.3 (AdamW at its default settings)",
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 1e-2},
}


def _sepnorm_table(batch_size: int) -> dict[str, Any]:
    """The SepNorm paper's table 5 (batch 256), its lrs scaled by ``batch_size / 256``."""
    scale = batch_size / 256
    note = "" if batch_size == 256 else f", lr scaled linearly to batch {batch_size} (table 2)"
    return {
        "citation": f"SepNorm paper, table 5 (ImageNet ResNet-50, batch 256){note}",
        "adamw": {"lr": 7.5e-4 * scale, "betas": (0.9, 0.999), "weight_decay": 0.1},
        "lion": {"lr": 7.5e-5 * scale, "betas": (0.9, 0.99), "weight_decay": 1.0},
        "sepnorm": {"lr": 7.5e-5 * scale, "betas": (0.9, 0.99), "weight_decay": 1.0},
    }


PAPER_TABLES: dict[str, dict[str, Any]] = {
    "cifar10[model=vgg11]": _lpsgd_table(
        "LPSGD paper, table 4 (CIFAR-10, VGG-11)",
        (0.1, 1e-3),
        (1e-3, 0.1),
        (1e-4, 1e-3),
        (6, 1e-3, 1e-2),
    ),
    "cifar10[model=resnet18]": _lpsgd_table(
        "LPSGD paper, table 4 (CIFAR-10, ResNet-18)",
        (0.1, 1e-3),
        (1e-3, 0.1),
        (1e-4, 1e-3),
        (6, 1e-3, 1e-2),
    ),
    "cifar10[model=resnet50]": _lpsgd_table(
        "LPSGD paper, table 4 (CIFAR-10, ResNet-50)",
        (0.05, 5e-4),
        (1e-3, 1e-4),
        (1e-4, 5e-4),
        (6, 2e-3, 1e-4),
    ),
    "cifar100[model=vgg11]": _lpsgd_table(
        "LPSGD paper, table 5 (CIFAR-100, VGG-11)",
        (0.1, 1e-3),
        (1e-3, 1e-3),
        (1e-4, 1e-4),
        (8, 5e-4, 5e-4),
    ),
    "cifar100[model=resnet18]": _lpsgd_table(
        "LPSGD paper, table 5 (CIFAR-100, ResNet-18)",
        (0.1, 1e-2),
        (1e-2, 0.1),
        (1e-3, 0.1),
        (6, 1e-2, 0.1),
    ),
    "cifar100[model=resnet50]": _lpsgd_table(
        "LPSGD paper, table 5 (CIFAR-100, ResNet-50)",
        (0.1, 1e-5),
        (1e-3, 0.1),
        (1e-3, 1e-5),
        (6, 1e-3, 0.1),
    ),
    "cifar100[model=resnet101]": AGR_ADAMW,
    "imagenet[batch_size=128,model=resnet50]": _lpsgd_table(
        "LPSGD paper, table 6 (ImageNet-1K, ResNet-50)",
        (0.01, 5e-4),
        (1e-3, 1e-4),
        (3e-4, 1e-2),
        (9, 2e-3, 5e-3),
        lion_beta2=0.99,
    ),
    **{
        f"imagenet[batch_size={batch},model=resnet50]": _sepnorm_table(batch)
        for batch in (64, 256, 512)
    },
    **{f"tinyimagenet[model={model}]": AGR_ADAMW for model in CIFAR_MODEL_NAMES},
}
"""The GPU tasks' paper presets by :func:`preset_key` (over :data:`DEFAULT_PRESETS` and the
warmup + cosine schedule), each with its ``citation``."""


def paper_preset(
    task: str, optimizer: str, task_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The papers' hyper-parameters for ``optimizer`` on ``task`` (a fresh dict); a task
    variant (``grokking[model=transformer]``) has its own entry or falls back to the task's."""
    if optimizer not in DEFAULT_PRESETS:
        raise KeyError(f"no preset for optimizer {optimizer!r}")
    key = preset_key(task, task_overrides or {})
    if key is not None:
        return {**_SCHEDULE, **DEFAULT_PRESETS[optimizer], **_table_entry(key, optimizer)[1]}
    per_task = TASK_PRESETS.get(task_label(task, task_overrides or {}), TASK_PRESETS.get(task, {}))
    base = PRESET_BASE.get(optimizer, optimizer)
    return {
        **_SCHEDULE,
        **DEFAULT_PRESETS[optimizer],
        **per_task.get("*", {}),
        **per_task.get(optimizer, per_task.get(base, {})),
    }


def paper_provenance(
    task: str, optimizer: str, task_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The provenance of a paper preset."""
    key = preset_key(task, task_overrides or {})
    citation = CITATIONS.get(task, DEFAULT_CITATION)
    if key is not None:
        citation = _table_entry(key, optimizer)[0]
    return {
        "source": "paper",
        "citation": citation,
        "optimizer": PRESET_BASE.get(optimizer, optimizer),
    }


def preset_key(task: str, task_overrides: dict[str, Any]) -> str | None:
    """``task[option=value,...]`` over the options a GPU task's ``PRESET_OPTIONS`` names (its
    defaults filled in, other options left out: ``data_dir`` or ``amp`` select no preset), the
    key of :data:`PAPER_TABLES`; ``None`` for a task without ``PRESET_OPTIONS``."""
    from geoptim.bench.tasks import TASKS

    cls = TASKS.get(task)
    names = getattr(cls, "PRESET_OPTIONS", ())
    if not names:
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return task_label(task, {name: task_overrides.get(name, defaults[name]) for name in names})


def _table_entry(key: str, optimizer: str) -> tuple[str, dict[str, Any]]:
    """``(citation, hparams)`` of ``optimizer`` (or the optimizer whose preset it takes) under
    ``key``; :class:`MissingPreset` when the tables give none."""
    table = PAPER_TABLES.get(key, {})
    base = PRESET_BASE.get(optimizer, optimizer)
    if base not in table:
        given = ", ".join(name for name in table if name != "citation") or "none"
        raise MissingPreset(
            f"no preset for {key} x {optimizer}: the papers' tables give {given} there "
            "(add it to PAPER_TABLES in geoptim/bench/presets.py; geoptim bench also takes "
            "--preset-file)"
        )
    citation = table["citation"]
    if base in ("sgd", "lpsgd"):
        citation += "; SGDM's / LPSGDM's values with momentum 0 (fig. 2 gives none of its own)"
    return citation, table[base]


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
            return paper_provenance(task, optimizer, task_overrides)
        return {**tuned["provenance"], "optimizer": tuned["optimizer"]}
