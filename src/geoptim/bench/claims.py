"""The papers' claims, tested on the records with a stated statistical rule.

Each claim is a function from a :class:`~geoptim.bench.results.Section` to zero or more
:class:`ClaimRow` (a claim applies only where its runs exist). :data:`RULE` is the rule, word for
word as the report prints it; :func:`compare` and :func:`non_monotone` implement it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from geoptim.bench.results import Section, Series

ALPHA = 0.05
MIN_SEEDS = 3

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"

RULE = f"""\
**Rule.** Each comparison of two settings runs Welch's two-sample t-test (unequal variances,
two-sided) on their per-seed values at α = {ALPHA}. *Reproduced*: p < α and the difference lies in
the direction the paper claims. *Not reproduced*: p < α in the opposite direction. *Inconclusive*:
p ≥ α, or fewer than {MIN_SEEDS} seeds on either side. Two samples with no spread at all differ
with p = 0 when their means differ, p = 1 otherwise. A claim made of several comparisons (an
ordering) is reproduced when every comparison is, not reproduced when any is, inconclusive
otherwise. *Non-monotone in p_max*: reproduced when the p_max with the best mean accuracy is
interior and beats both ends of the range; not reproduced when the best is an end of the range
and beats every interior value; inconclusive otherwise. Grokking gap: a run whose test accuracy
never reaches τ counts with the lower bound (steps − train-reach step), marked "≥"; a run whose
train accuracy never reaches τ is left out."""


@dataclass
class ClaimRow:
    """One claim tested on one task: what was measured and the verdict."""

    claim: str
    source: str
    task: str
    measured: str
    seeds: str
    test: str
    verdict: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value; samples without spread handled as :data:`RULE` says."""
    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare(better: Sequence[float], worse: Sequence[float], higher_is_better: bool = True,
            alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> tuple[str, float | None]:
    """The verdict on "``better`` beats ``worse``" and the p-value (``None`` if not tested).

    NaN values (missing, diverged) are dropped first.
    """
    a, b = _finite(better), _finite(worse)
    if len(a) < min_seeds or len(b) < min_seeds:
        return INCONCLUSIVE, None
    p = welch_p(a, b)
    if p >= alpha:
        return INCONCLUSIVE, p
    claimed = np.mean(a) > np.mean(b) if higher_is_better else np.mean(a) < np.mean(b)
    return (REPRODUCED if claimed else NOT_REPRODUCED), p


def combine(verdicts: Sequence[str]) -> str:
    """All reproduced: reproduced; any not reproduced: not reproduced; else inconclusive."""
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def non_monotone(samples: dict[float, Sequence[float]], alpha: float = ALPHA,
                 min_seeds: int = MIN_SEEDS) -> tuple[str, float, list[float | None]]:
    """Verdict on "accuracy is non-monotone in p", the best p, and the p-values used."""
    keys = sorted(samples)
    means = {k: np.mean(_finite(samples[k])) if len(_finite(samples[k])) else -np.inf
             for k in keys}
    best = max(keys, key=lambda k: means[k])
    if len(keys) < 3:
        return INCONCLUSIVE, best, []
    at_end = best in (keys[0], keys[-1])
    others = keys[1:-1] if at_end else [keys[0], keys[-1]]
    results = [compare(samples[best], samples[k], True, alpha, min_seeds) for k in others]
    pvalues = [p for _, p in results]
    if all(verdict == REPRODUCED for verdict, _ in results):
        return (NOT_REPRODUCED if at_end else REPRODUCED), best, pvalues
    return INCONCLUSIVE, best, pvalues


# --------------------------------------------------------------------------------------------
# Formatting


def fmt_sample(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` of the finite values times ``scale`` (sample std, ddof 1)."""
    a = _finite(values) * scale
    if len(a) == 0:
        return "n/a"
    std = f"{np.std(a, ddof=1):.{digits}f}" if len(a) > 1 else "–"
    return f"{np.mean(a):.{digits}f} ± {std}"


def _fmt_p(pvalues: Sequence[float | None]) -> str:
    shown = [f"p = {p:.3g}" for p in pvalues if p is not None]
    return "; ".join(shown) if shown else "not tested (too few seeds)"


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


# --------------------------------------------------------------------------------------------
# The claims


def _by_preset(section: Section, *optimizers: str) -> list[tuple[str, list[Series]]]:
    """For each preset source, the base series of ``optimizers`` when all are present."""
    found = []
    for preset in section.presets:
        chosen = []
        for name in optimizers:
            matches = [s for s in section.find(name, {}) if s.preset == preset]
            if not matches:
                break
            chosen.append(matches[0])
        else:
            found.append((preset, chosen))
    return found


def _task(section: Section, preset: str) -> str:
    return section.title if preset == "paper" else f"{section.title} ({preset} presets)"


def _has_accuracy(series: Sequence[Series]) -> bool:
    return all(np.isfinite(s.final("test_acc")).any() for s in series)


def _accuracy_claim(claim: str, source: str, better: str, worse: str
                    ) -> Callable[[Section], list[ClaimRow]]:
    """"``better`` reaches a higher final test accuracy than ``worse``"."""

    def evaluate(section: Section) -> list[ClaimRow]:
        rows = []
        for preset, (a, b) in _by_preset(section, better, worse):
            if not _has_accuracy([a, b]):
                continue
            verdict, p = compare(a.final("test_acc"), b.final("test_acc"))
            rows.append(ClaimRow(
                claim, source, _task(section, preset),
                f"test acc % {a.label} {fmt_sample(a.final('test_acc'), 100)} vs "
                f"{b.label} {fmt_sample(b.final('test_acc'), 100)}",
                f"{a.n} / {b.n}", _fmt_p([p]), verdict))
        return rows

    return evaluate


def grokking_gaps(series: Series) -> tuple[np.ndarray, int]:
    """Per run the grokking gap in steps, and how many are lower bounds (test never reached
    τ: steps − train-reach step). Runs whose train accuracy never reached τ are dropped."""
    gaps, censored = [], 0
    for record in series.records:
        extra = record["result"].get("extra") or {}
        if extra.get("gap") is not None:
            gaps.append(float(extra["gap"]))
        elif extra.get("train_reach_step") is not None:
            gaps.append(float(record["result"]["steps"] - extra["train_reach_step"]))
            censored += 1
    return np.array(gaps, dtype=float), censored


def _fmt_gap(series: Series) -> str:
    gaps, censored = grokking_gaps(series)
    mark = f", {censored} ≥" if censored else ""
    return f"{series.label} {fmt_sample(gaps, digits=0)} ({len(gaps)}/{series.n}{mark})"


def _gap_claim(claim: str, pairs: Sequence[tuple[str, str]]
               ) -> Callable[[Section], list[ClaimRow]]:
    """"the first of each pair has a smaller grokking gap than the second"."""
    names = list(dict.fromkeys(name for pair in pairs for name in pair))

    def evaluate(section: Section) -> list[ClaimRow]:
        if section.task != "grokking":
            return []
        rows = []
        for preset, chosen in _by_preset(section, *names):
            series = dict(zip(names, chosen, strict=True))
            results = [compare(grokking_gaps(series[a])[0], grokking_gaps(series[b])[0],
                               higher_is_better=False) for a, b in pairs]
            rows.append(ClaimRow(
                claim, "SepNorm paper, fig. 1", _task(section, preset),
                "gap (steps) " + "; ".join(_fmt_gap(series[name]) for name in names),
                " / ".join(str(series[name].n) for name in names),
                _fmt_p([p for _, p in results]), combine([v for v, _ in results])))
        return rows

    return evaluate


def _agr_late(section: Section) -> list[ClaimRow]:
    rows = []
    for preset, (base,) in _by_preset(section, "adamw_agr"):
        for late in section.find("adamw_agr"):
            if set(late.variant) != {"agr_until"} or late.preset != preset:
                continue
            if not _has_accuracy([base, late]):
                continue
            verdict, p = compare(late.final("test_acc"), base.final("test_acc"))
            rows.append(ClaimRow(
                "Stopping AGR late helps (AdamW-AGR)", "AGR paper, tables 7-8",
                _task(section, preset),
                f"test acc % {late.label} {fmt_sample(late.final('test_acc'), 100)} vs "
                f"AGR throughout {fmt_sample(base.final('test_acc'), 100)}",
                f"{late.n} / {base.n}", _fmt_p([p]), verdict))
    return rows


def _p_max(section: Section) -> list[ClaimRow]:
    rows = []
    for preset in section.presets:
        sweep = [s for s in section.find("lpsgdm") if s.preset == preset
                 and set(s.variant) <= {"p_max"} and "p_max" in s.hparams]
        samples: dict[float, list[float]] = {}
        for s in sweep:
            samples.setdefault(float(s.hparams["p_max"]), []).extend(s.final("test_acc"))
        if len(samples) < 3 or not all(np.isfinite(v).any() for v in samples.values()):
            continue
        verdict, best, pvalues = non_monotone(samples)
        measured = "; ".join(f"p_max {k:g}: {fmt_sample(samples[k], 100)}"
                             for k in sorted(samples))
        rows.append(ClaimRow(
            "LPSGDM test accuracy is non-monotone in p_max", "LPSGD paper, fig. 4",
            _task(section, preset), f"test acc % {measured}; best p_max {best:g}",
            " / ".join(str(len(samples[k])) for k in sorted(samples)),
            _fmt_p(pvalues), verdict))
    return rows


CLAIMS: list[Callable[[Section], list[ClaimRow]]] = [
    _accuracy_claim("LPSGDM beats SGD with momentum", "LPSGD paper, tables 1-2",
                    "lpsgdm", "sgdm"),
    _gap_claim("Grokking gap: SepNorm < Lion < AdamW",
               [("sepnorm", "lion"), ("lion", "adamw")]),
    _gap_claim("OrtSepNorm has the smallest grokking gap",
               [("ortsepnorm", "sepnorm"), ("ortsepnorm", "lion"), ("ortsepnorm", "adamw")]),
    _accuracy_claim("AGR improves AdamW", "AGR paper, tables 3-6", "adamw_agr", "adamw"),
    _accuracy_claim("AGR improves Adan", "AGR paper, tables 1-2", "adan_agr", "adan"),
    _agr_late,
    _p_max,
]
"""Every claim the suite can test, in report order."""


def evaluate(sections: Sequence[Section]) -> list[ClaimRow]:
    """Every applicable claim on every section, grouped by claim."""
    return [row for claim in CLAIMS for section in sections for row in claim(section)]


def markdown(rows: Sequence[ClaimRow]) -> str:
    """The claims table and the rule."""
    lines = [
        "| claim | source | task | measured (mean ± std over seeds) | seeds | test | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| {row.claim} | {row.source} | {row.task} | {row.measured} | "
                     f"{row.seeds} | {row.test} | **{row.verdict}** |")
    if not rows:
        lines.append("| (no claim applies to these records) | | | | | | |")
    return "\n".join(lines) + "\n\n" + RULE + "\n"
