"""A small search over lr, weight decay (and p_max for the l_p methods), as the papers tuned.

The grid multiplies the paper preset's lr by :data:`LR_FACTORS` and its weight decay by
:data:`WD_FACTORS` (or takes :data:`WD_VALUES` when the preset has none), and for LPSGD/LPSGDM
takes ``p_max`` from :data:`P_MAX_VALUES`. With a budget of ``N`` trials the paper preset is always
tried, then ``N - 1`` grid points drawn at random (seeded, so a re-run tries the same ones); a
budget at least the grid's size tries the whole grid. Each trial runs ``seeds`` seeds (numbered
from :data:`SEED_BASE`) of the suite's budget; its score is the mean final test accuracy (tasks
without one: minus the final train loss; a diverged run scores -inf). Trials are ordinary runs
with records under ``DIR/tune``, so an interrupted search resumes. The best setting becomes the
tuned preset ``DIR/presets/<task>__<optimizer>.json``.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
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
"""Trials use seeds ``SEED_BASE, SEED_BASE + 1, ...``, apart from the benchmark's ``0, 1, ...``,
so a tuned setting is not chosen on the very runs it is then judged on."""


@dataclass
class Trial:
    """One grid point and its score."""

    setting: dict[str, Any]
    score: float
    runs: int


def _round(value: float) -> float:
    return float(f"{value:.3g}")


def grid(optimizer: str, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Every grid point (the hyper-parameters that differ from ``base``'s keys)."""
    lrs = [_round(base["lr"] * f) for f in LR_FACTORS]
    wd = float(base.get("weight_decay", 0.0))
    wds = [_round(wd * f) for f in WD_FACTORS] if wd > 0 else list(WD_VALUES)
    axes: dict[str, list[Any]] = {"lr": lrs, "weight_decay": sorted(set(wds))}
    if "p_max" in base:
        axes["p_max"] = list(P_MAX_VALUES)
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def choose(points: list[dict[str, Any]], base: dict[str, Any], budget: int,
           seed: int = 0) -> list[dict[str, Any]]:
    """The preset's own point first, then ``budget - 1`` others drawn at random."""
    own = {key: base.get(key, 0.0) for key in points[0]}
    rest = [p for p in points if p != own]
    random.Random(seed).shuffle(rest)
    return [own, *rest][:budget]


def score(records: list[dict[str, Any] | None]) -> float:
    """Mean final test accuracy over the runs (or minus the train loss); -inf if any diverged
    or is missing."""
    values = []
    for record in records:
        if record is None:
            return -math.inf
        result = record["result"]
        if (result.get("extra") or {}).get("diverged"):
            return -math.inf
        final = result.get("final") or {}
        value = final.get("test_acc")
        if value is None and final.get("train_loss") is not None:
            value = -final["train_loss"]
        if value is None or not math.isfinite(value):
            return -math.inf
        values.append(value)
    return float(np.mean(values)) if values else -math.inf


def tune(task: Any, task_name: str, task_overrides: dict[str, Any], optimizer: str,
         budget: int, out_dir: str | Path, seeds: int = 1, suite: str = "quick",
         workers: int = 1, quiet: bool = False, executor: Executor | None = None,
         ) -> tuple[Path, list[Trial]]:
    """Run the search and write the tuned preset; return its path and the trials, best first.
    The trials run on ``executor`` (default: a local pool of ``workers`` processes)."""
    base = paper_preset(task_name, optimizer, task_overrides)
    points = choose(grid(optimizer, base), base, budget)
    run_budget = task.default_budget(suite)
    trial_dir = Path(out_dir) / TUNE_SUBDIR
    specs = {
        id(point): [
            RunSpec(task=task_name, task_overrides=dict(task_overrides), optimizer=optimizer,
                    hparams={**base, **point}, seed=SEED_BASE + seed, budget=run_budget,
                    variant=point, suite=f"tune-{suite}")
            for seed in range(seeds)
        ]
        for point in points
    }
    execute([s for group in specs.values() for s in group], trial_dir, workers=workers,
            quiet=quiet, executor=executor)
    trials = [
        Trial(point, score([read_record(record_path(trial_dir, s.run_id))
                            for s in specs[id(point)]]), seeds)
        for point in points
    ]
    trials.sort(key=lambda t: t.score, reverse=True)
    best = trials[0]
    path = save_tuned(
        Path(out_dir) / PRESETS_SUBDIR, task_name, task_overrides, optimizer,
        {**base, **best.setting},
        {
            "source": "geoptim tune",
            "metric": "mean final test accuracy (or -train loss)",
            "score": best.score if math.isfinite(best.score) else None,
            "seeds": seeds,
            "suite": suite,
            "budget": run_budget,
            "trials": [{"setting": t.setting, "score": t.score if math.isfinite(t.score)
                        else None} for t in trials],
        },
    )
    return path, trials
