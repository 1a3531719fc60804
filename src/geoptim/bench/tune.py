"""Hyper-parameter search on the validation split, with tuning seeds apart from benchmark seeds.

The search space multiplies the paper preset's lr by :data:`LR_FACTORS` and its weight decay by
:data:`WD_FACTORS` (or takes :data:`WD_VALUES` when the preset has none), and for LPSGD/LPSGDM
takes ``p_max`` from :data:`P_MAX_VALUES`; a caller may give its own ``space`` (axis -> values).
With a budget of ``N`` trials the paper preset is always tried, then ``N - 1`` grid points drawn
at random (seeded, so a re-run tries the same ones); a budget at least the grid's size tries the
whole grid. Each trial runs ``seeds`` seeds, numbered from :data:`SEED_BASE` (never a benchmark
seed), of the suite's budget.

The score of a trial is the task's ``TUNING_METRIC`` averaged over its seeds (a diverged or
missing run scores -inf), read from the validation split only, never from the test split:

* ``"val_acc"``: the final validation accuracy (the default);
* ``"val_acc_mean"``: the mean validation accuracy over all checkpoints (the area under the
  validation learning curve; grokking, where most settings end at 100%);
* ``"-train_loss"``: minus the final training loss (the quadratic, which has no data to hold out);
* in general ``"NAME"`` (the final value, higher is better), ``"-NAME"`` (lower is better,
  e.g. ``"-val_loss"``, ``"-val_bpc"``) and ``"NAME_mean"`` (the mean over checkpoints); a
  ``test_`` metric is refused.

Trials are ordinary runs with records under ``DIR/tune``, so an interrupted search resumes. The
best setting becomes the tuned preset ``DIR/presets/<task>__<optimizer>.json`` with its
``provenance`` (:func:`provenance`): search space, trials, seeds, budget, metric, date, data hash.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from geoptim.bench.executors import Executor
from geoptim.bench.presets import PRESETS_SUBDIR, paper_preset, save_tuned
from geoptim.bench.records import RunSpec, read_record, record_path
from geoptim.bench.runner import execute

LR_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
WD_FACTORS = (0.0, 0.1, 1.0, 10.0)
WD_VALUES = (0.0, 1e-4, 1e-3, 1e-2)
P_MAX_VALUES = (4, 6, 8, 12)
TUNE_SUBDIR = "tune"
SEED_BASE = 1000
"""Trials use seeds ``SEED_BASE, SEED_BASE + 1, ...``; the benchmark's are ``0 .. SEED_BASE - 1``,
so a tuned setting is never chosen on the very runs it is then judged on."""
METRICS = ("val_acc", "val_acc_mean", "-train_loss", "-val_loss")
"""The tuning metrics the shipped tasks use (any ``[-]NAME[_mean]`` of a non-test metric works)."""


@dataclass
class Trial:
    """One grid point and its score."""

    setting: dict[str, Any]
    score: float
    runs: int


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def search_space(optimizer: str, base: dict[str, Any]) -> dict[str, list[Any]]:
    """The default axes around the paper preset ``base`` (see module doc)."""
    lrs = [_round(base["lr"] * f) for f in LR_FACTORS]
    wd = float(base.get("weight_decay", 0.0))
    wds = [_round(wd * f) for f in WD_FACTORS] if wd > 0 else list(WD_VALUES)
    axes: dict[str, list[Any]] = {"lr": lrs, "weight_decay": sorted(set(wds))}
    if "p_max" in base:
        axes["p_max"] = list(P_MAX_VALUES)
    return axes


def grid(
    optimizer: str, base: dict[str, Any], space: dict[str, Sequence[Any]] | None = None
) -> list[dict[str, Any]]:
    """Every point of ``space`` (default :func:`search_space`)."""
    axes = space if space is not None else search_space(optimizer, base)
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def choose(
    points: list[dict[str, Any]], base: dict[str, Any], budget: int, seed: int = 0
) -> list[dict[str, Any]]:
    """The preset's own point first (when it is in the grid), then others drawn at random, up
    to ``budget`` points."""
    own = {key: base.get(key, 0.0) for key in points[0]}
    rest = [p for p in points if p != own]
    random.Random(seed).shuffle(rest)
    return ([own] if own in points else []) + rest[: budget - (own in points)]


def run_value(result: dict[str, Any], metric: str) -> float:
    """One run's ``metric`` (see module doc); ``nan`` when the run lacks it. A metric of the test
    split is refused: tuning never reads it."""
    name = metric.removeprefix("-")
    if name.startswith("test"):
        raise ValueError(f"tuning metric {metric!r} reads the test split; use a val_ metric")
    if name.endswith("_mean"):
        curve = (result.get("curves") or {}).get(name.removesuffix("_mean"))
        value = float(np.mean(curve)) if curve else math.nan
    else:
        value = float((result.get("final") or {}).get(name, math.nan))
    return -value if metric.startswith("-") else value


def score(records: list[dict[str, Any] | None], metric: str = "val_acc") -> float:
    """Mean ``metric`` over the runs; -inf if any run diverged, is missing or lacks it."""
    values = []
    for record in records:
        if record is None:
            return -math.inf
        result = record["result"]
        if (result.get("extra") or {}).get("diverged"):
            return -math.inf
        value = run_value(result, metric)
        if not math.isfinite(value):
            return -math.inf
        values.append(value)
    return float(np.mean(values)) if values else -math.inf


def provenance(
    task: Any,
    metric: str,
    space: dict[str, Sequence[Any]],
    trials: int,
    seeds: Sequence[int],
    budget: dict[str, Any],
    suite: str,
) -> dict[str, Any]:
    """How a tuned preset was chosen: what every shipped or tuned preset carries."""
    data_hash = getattr(task, "data_hash", None)
    return {
        "source": "geoptim tune",
        "selected_on": "validation",
        "metric": metric,
        "search_space": {key: list(values) for key, values in space.items()},
        "trials": trials,
        "seeds": list(seeds),
        "budget": dict(budget),
        "suite": suite,
        "date": datetime.now(timezone.utc).date().isoformat(),
        "data_hash": data_hash() if callable(data_hash) else None,
    }


def tune(
    task: Any,
    task_name: str,
    task_overrides: dict[str, Any],
    optimizer: str,
    budget: int,
    out_dir: str | Path,
    seeds: int = 1,
    suite: str = "quick",
    workers: int = 1,
    quiet: bool = False,
    space: dict[str, Sequence[Any]] | None = None,
    executor: Executor | None = None,
) -> tuple[Path, list[Trial]]:
    """Run the search and write the tuned preset; return its path and the trials, best first.
    The trials run on ``executor`` (default: a local pool of ``workers`` processes)."""
    base = paper_preset(task_name, optimizer, task_overrides)
    axes = space if space is not None else search_space(optimizer, base)
    points = choose(grid(optimizer, base, axes), base, budget)
    metric = getattr(task, "TUNING_METRIC", "val_acc")
    run_budget = task.default_budget(suite)
    seed_list = [SEED_BASE + k for k in range(seeds)]
    trial_dir = Path(out_dir) / TUNE_SUBDIR
    specs = {
        id(point): [
            RunSpec(
                task=task_name,
                task_overrides=dict(task_overrides),
                optimizer=optimizer,
                hparams={**base, **point},
                seed=seed,
                budget=run_budget,
                variant=point,
                suite=f"tune-{suite}",
            )
            for seed in seed_list
        ]
        for point in points
    }
    execute(
        [s for group in specs.values() for s in group],
        trial_dir,
        workers=workers,
        quiet=quiet,
        executor=executor,
    )
    trials = [
        Trial(
            point,
            score(
                [read_record(record_path(trial_dir, s.run_id)) for s in specs[id(point)]], metric
            ),
            seeds,
        )
        for point in points
    ]
    trials.sort(key=lambda t: t.score, reverse=True)
    best = trials[0]
    info = provenance(task, metric, axes, len(points), seed_list, run_budget, suite)
    info["score"] = best.score if math.isfinite(best.score) else None
    info["all_trials"] = [
        {"setting": t.setting, "score": t.score if math.isfinite(t.score) else None} for t in trials
    ]
    path = save_tuned(
        Path(out_dir) / PRESETS_SUBDIR,
        task_name,
        task_overrides,
        optimizer,
        {**base, **best.setting},
        info,
    )
    return path, trials
