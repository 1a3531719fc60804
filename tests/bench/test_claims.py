"""The claim verdict rule on constructed samples, and claims read from records."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from geoptim.bench import claims
from geoptim.bench.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from geoptim.bench.results import group

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_records import record

HIGH = [0.91, 0.93, 0.92, 0.94]
LOW = [0.81, 0.83, 0.82, 0.80]


def test_significant_in_the_claimed_direction_is_reproduced():
    verdict, p = claims.compare(HIGH, LOW)
    assert verdict == REPRODUCED
    assert p == pytest.approx(stats.ttest_ind(HIGH, LOW, equal_var=False).pvalue)
    assert p < 0.05


def test_significant_in_the_opposite_direction_is_not_reproduced():
    assert claims.compare(LOW, HIGH)[0] == NOT_REPRODUCED
    # lower is better (a grokking gap): LOW beating HIGH is the claim
    assert claims.compare(LOW, HIGH, higher_is_better=False)[0] == REPRODUCED
    assert claims.compare(HIGH, LOW, higher_is_better=False)[0] == NOT_REPRODUCED


def test_overlapping_samples_are_inconclusive():
    a, b = [0.90, 0.80, 0.85], [0.86, 0.84, 0.79]
    verdict, p = claims.compare(a, b)
    assert verdict == INCONCLUSIVE and p >= 0.05


def test_fewer_than_three_seeds_is_inconclusive_whatever_the_gap():
    assert claims.compare([0.99, 0.98], [0.1, 0.11, 0.12]) == (INCONCLUSIVE, None)
    # NaN (a diverged run) is dropped before counting
    assert claims.compare([0.99, 0.98, np.nan], LOW) == (INCONCLUSIVE, None)
    assert claims.compare([0.99, 0.98, 0.97, np.nan], LOW)[0] == REPRODUCED


def test_samples_without_spread():
    assert claims.compare([1, 1, 1], [0, 0, 0]) == (REPRODUCED, 0.0)
    assert claims.compare([1, 1, 1], [1, 1, 1]) == (INCONCLUSIVE, 1.0)


def test_alpha_is_the_threshold():
    a, b = [1.0, 2.0, 3.0], [2.5, 3.5, 4.5]
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert claims.compare(b, a, alpha=p * 1.01)[0] == REPRODUCED
    assert claims.compare(b, a, alpha=p * 0.99)[0] == INCONCLUSIVE


def test_combine():
    assert claims.combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert claims.combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert claims.combine([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE]) == NOT_REPRODUCED
    assert claims.combine([]) == INCONCLUSIVE


def test_non_monotone_rule():
    peak = {2: LOW, 6: HIGH, 12: [0.85, 0.86, 0.84, 0.85]}
    assert claims.non_monotone(peak)[:2] == (REPRODUCED, 6)
    rising = {2: LOW, 6: [0.86, 0.87, 0.85, 0.86], 12: HIGH}
    assert claims.non_monotone(rising)[:2] == (NOT_REPRODUCED, 12)
    flat = {2: [0.8, 0.9, 0.85], 6: [0.86, 0.8, 0.9], 12: [0.84, 0.88, 0.82]}
    assert claims.non_monotone(flat)[0] == INCONCLUSIVE
    # interior best but indistinguishable from one end: inconclusive
    half = {2: LOW, 6: HIGH, 12: [0.92, 0.93, 0.91, 0.92]}
    assert claims.non_monotone(half)[0] == INCONCLUSIVE
    assert claims.non_monotone({2: LOW, 6: HIGH})[0] == INCONCLUSIVE


def _section_records():
    steps = [0, 10]
    recs = []
    for seed in range(3):
        for opt, acc in (("adamw", 0.80), ("adamw_agr", 0.85), ("adan", 0.90),
                         ("adan_agr", 0.70)):
            recs.append(record("digits", opt, seed, steps=steps,
                               test_acc=[0.1, acc + 0.01 * seed]))
        recs.append(record("digits", "adamw_agr", seed, steps=steps, variant={"agr_until": 5},
                           test_acc=[0.1, 0.85 + 0.01 * seed]))
        for p_max, acc in ((2, 0.80), (4, 0.90), (8, 0.82)):
            recs.append(record("digits", "lpsgdm", seed, steps=steps, variant={"p_max": p_max},
                               test_acc=[0.1, acc + 0.01 * seed]))
    return recs


def test_claims_from_records():
    rows = {row.claim: row for row in claims.evaluate(group(_section_records()))}
    assert rows["AGR improves AdamW"].verdict == REPRODUCED
    assert rows["AGR improves AdamW"].measured == (
        "test acc % adamw_agr 86.00 ± 1.00 vs adamw 81.00 ± 1.00")
    assert rows["AGR improves Adan"].verdict == NOT_REPRODUCED
    assert rows["Stopping AGR late helps (AdamW-AGR)"].verdict == INCONCLUSIVE
    pmax = rows["LPSGDM test accuracy is non-monotone in p_max"]
    assert pmax.verdict == REPRODUCED and "best p_max 4" in pmax.measured
    assert pmax.seeds == "3 / 3 / 3"
    assert "LPSGDM beats SGD with momentum" not in rows  # no runs for it: not in the table


def test_grokking_gap_censoring():
    recs = []
    for seed, (train, test) in enumerate([(50, 150), (60, None), (None, None)]):
        gap = None if train is None or test is None else test - train
        recs.append(record("grokking", "adamw", seed, steps=[0, 200, 400], extra={
            "tau": 0.99, "train_reach_step": train, "test_reach_step": test, "gap": gap}))
    (section,) = group(recs)
    gaps, censored = claims.grokking_gaps(section.series[0])
    assert list(gaps) == [100, 340] and censored == 1
