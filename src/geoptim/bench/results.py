"""Records grouped for analysis: a :class:`Section` per task variant and budget, a
:class:`Series` per optimizer setting in it (its runs over seeds).

Also the one place that formats a sample as ``mean ± std`` (:func:`mean_std`, :func:`fmt`,
:func:`fmt_sample`); claims, plots and the report all use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoptim.bench.records import canonical_json, config_hash


@dataclass
class Series:
    """The runs (one per seed) of one optimizer setting on one task."""

    label: str
    optimizer: str
    variant: dict[str, Any]
    preset: str
    hparams: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def is_base(self) -> bool:
        """Run with the preset as is (no hyper-parameter set on purpose)."""
        return not self.variant

    def final(self, metric: str) -> np.ndarray:
        """Per seed, the metric at the end of the run (NaN where missing or non-finite)."""
        values = []
        for record in self.records:
            result = record["result"]
            value = (result.get("final") or {}).get(metric)
            if value is None:
                curve = (result.get("curves") or {}).get(metric) or []
                value = curve[-1] if curve else None
            values.append(_number(value))
        return np.array(values, dtype=float)

    @property
    def seeds(self) -> list[int]:
        return [int(record["seed"]) for record in self.records]

    def by_seed(self, metric: str) -> dict[int, float]:
        """The final ``metric`` of each seed."""
        return dict(zip(self.seeds, self.final(metric).tolist(), strict=True))

    def generalisation_times(self) -> tuple[np.ndarray, np.ndarray]:
        """Grokking: per run the step at which test accuracy first reached τ and whether it did
        (``False``: censored at the run's budget, ``result["steps"]``, whether or not the run
        ever fitted its training set; no run is dropped)."""
        times, events = [], []
        for record in self.records:
            reached = (record["result"].get("extra") or {}).get("test_reach_step")
            events.append(reached is not None)
            times.append(float(reached if reached is not None else record["result"]["steps"]))
        return np.array(times, dtype=float), np.array(events, dtype=bool)

    def gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """Grokking gaps (test-reach minus train-reach step) of the runs that fitted, and per
        such run whether the gap was observed (``False``: test never reached τ, the gap is
        censored at ``steps - train reach step``). Runs that never fitted have no gap."""
        gaps, observed = [], []
        for record in self.records:
            extra = record["result"].get("extra") or {}
            train = extra.get("train_reach_step")
            if train is None:
                continue
            observed.append(extra.get("gap") is not None)
            end = extra["gap"] + train if observed[-1] else record["result"]["steps"]
            gaps.append(float(end - train))
        return np.array(gaps, dtype=float), np.array(observed, dtype=bool)

    def curve_area(self, metric: str = "test_acc", axis: str = "step") -> np.ndarray:
        """Per seed, the mean of ``metric`` over the run (trapezoid area under its learning
        curve divided by the x range): a continuous summary of the whole curve."""
        curve = self.curve(metric, axis)
        if curve is None or len(curve[0]) < 2:
            return np.full(self.n, np.nan)
        x, values = curve
        return np.trapezoid(values, x, axis=1) / (x[-1] - x[0])

    def extra(self, key: str) -> list[Any]:
        return [(record["result"].get("extra") or {}).get(key) for record in self.records]

    def curve(self, metric: str, axis: str = "step") -> tuple[np.ndarray, np.ndarray] | None:
        """``(x, values)`` with ``values[seed, point]``, cut to the shortest run; ``None`` when
        the metric was not recorded."""
        rows, xs = [], None
        for record in self.records:
            curves = record["result"].get("curves") or {}
            values, x = curves.get(metric), curves.get(axis)
            if not values or not x or all(v is None for v in values):
                continue
            rows.append([_number(v) for v in values])
            xs = x if xs is None or len(x) < len(xs) else xs
        if not rows or xs is None:
            return None
        length = min(len(xs), *(len(row) for row in rows))
        return np.array(xs[:length], dtype=float), np.array([row[:length] for row in rows])

    def diverged(self) -> int:
        return sum(bool(flag) for flag in self.extra("diverged"))


@dataclass
class Section:
    """All series run on one task variant with one budget."""

    task: str
    task_label: str
    budget: dict[str, Any]
    title: str
    series: list[Series] = field(default_factory=list)

    def find(self, optimizer: str, variant: dict[str, Any] | None = None) -> list[Series]:
        """Series of ``optimizer`` with exactly ``variant`` (``None``: any variant)."""
        return [
            s
            for s in self.series
            if s.optimizer == optimizer and (variant is None or s.variant == variant)
        ]

    @property
    def presets(self) -> list[str]:
        return sorted({s.preset for s in self.series})


def group(records: Iterable[dict[str, Any]]) -> list[Section]:
    """Group records into sections and series, in a stable order."""
    sections: dict[tuple[str, str], Section] = {}
    series: dict[tuple[str, str, str, str], Series] = {}
    for record in sorted(records, key=lambda r: (r["task_label"], r["label"], r["seed"])):
        config, spec = record["config"], record.get("spec", {})
        budget_key = canonical_json(config["budget"])
        section = sections.get((record["task_label"], budget_key))
        if section is None:
            section = Section(
                config["task"], record["task_label"], config["budget"], record["task_label"]
            )
            sections[(record["task_label"], budget_key)] = section
        key = (record["task_label"], budget_key, record["label"], canonical_json(config["hparams"]))
        if key not in series:
            series[key] = Series(
                record["label"],
                config["optimizer"],
                spec.get("variant", {}),
                spec.get("preset", "paper"),
                config["hparams"],
            )
            section.series.append(series[key])
        series[key].records.append(record)
    _disambiguate(list(sections.values()))
    return list(sections.values())


def _disambiguate(sections: list[Section]) -> None:
    """Give sections of one task with different budgets, and series of one label with
    different hyper-parameters, distinct names."""
    by_task: dict[str, list[Section]] = {}
    for section in sections:
        by_task.setdefault(section.task_label, []).append(section)
    for same in by_task.values():
        if len(same) > 1:
            for section in same:
                section.title = f"{section.task_label} (budget {canonical_json(section.budget)})"
    for section in sections:
        counts: dict[str, int] = {}
        for s in section.series:
            counts[s.label] = counts.get(s.label, 0) + 1
        for s in section.series:
            if counts[s.label] > 1:
                s.label = f"{s.label} #{config_hash(s.hparams)[:6]}"


def paired(a: Series, b: Series, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The final ``metric`` of ``a`` and ``b`` on the seeds both ran, in seed order; ``None``
    when the two share fewer than two seeds (then they are not paired)."""
    va, vb = a.by_seed(metric), b.by_seed(metric)
    common = sorted(set(va) & set(vb))
    if len(common) < 2:
        return None
    return np.array([va[k] for k in common]), np.array([vb[k] for k in common])


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof 1; NaN for one value) and count of the finite values."""
    a = np.asarray(list(values), dtype=float)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan, len(a)


def fmt(mean: float, std: float, digits: int) -> str:
    """``mean ± std`` at ``digits`` decimals; ``–`` for what is not finite."""
    if not math.isfinite(mean):
        return "–"
    spread = f"{std:.{digits}f}" if math.isfinite(std) else "–"
    return f"{mean:.{digits}f} ± {spread}"


def fmt_sample(values: Iterable[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` of the finite values times ``scale``."""
    mean, std, _ = mean_std(np.asarray(list(values), dtype=float) * scale)
    return fmt(mean, std, digits)


def _number(value: Any) -> float:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return math.nan
