"""The verdict rule on its numbers, and claims read from constructed records: each verdict,
the pairing, Holm across the suite, censoring in grokking, matched regularisation, the
step-size answer."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from geoptim.bench import claims, stats
from geoptim.bench.claims import (
    EQUIVALENT,
    NOT_REPRODUCED,
    REFUTED,
    REPRODUCED,
    UNDERPOWERED,
    Arm,
    Claim,
)
from geoptim.bench.results import group

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_records import record


def test_verdict_rule_branches():
    # equivalence comes first, even when the difference is significant
    assert claims.verdict(0.1, 0.2, p_holm=0.001, p_tost=0.01, paper_effect=0.7) == EQUIVALENT
    assert claims.verdict(0.9, 0.5, p_holm=0.01, p_tost=0.9, paper_effect=0.7) == REPRODUCED
    assert claims.verdict(-0.9, 0.5, p_holm=0.01, p_tost=0.9, paper_effect=0.7) == REFUTED
    assert claims.verdict(0.3, 1.2, p_holm=0.3, p_tost=0.4, paper_effect=0.7) == UNDERPOWERED
    assert claims.verdict(0.1, 0.6, p_holm=0.3, p_tost=0.1, paper_effect=0.7) == NOT_REPRODUCED
    assert claims.verdict(math.nan, math.inf, None, None, paper_effect=0.7) == UNDERPOWERED
    # the boundary: MDE equal to the paper's effect is powered
    assert claims.verdict(0.1, 0.7, p_holm=0.3, p_tost=0.1, paper_effect=0.7) == NOT_REPRODUCED


def _accuracy_records(task, arms, seeds):
    """``arms``: optimizer or (optimizer, variant key, value) -> function seed -> final
    accuracy."""
    out = []
    for arm, acc in arms.items():
        optimizer, variant = (arm[0], {arm[1]: arm[2]}) if isinstance(arm, tuple) else (arm, {})
        for seed in range(seeds):
            out.append(
                record(
                    task, optimizer, seed, steps=[0, 10], variant=variant, test_acc=[0.1, acc(seed)]
                )
            )
    return out


NOISE = np.random.default_rng(0).normal(0, 0.01, 64)  # per-seed luck shared by both arms


def rows_by_claim(records, **kwargs):
    return {row.claim: row for row in claims.evaluate(group(records), **kwargs)}


def test_paired_effect_and_interval_are_the_paired_t_of_the_records():
    recs = _accuracy_records(
        "digits",
        {
            "lpsgdm": lambda k: 0.80 + NOISE[k] + 0.01 + 0.002 * (k % 3),
            "sgdm": lambda k: 0.80 + NOISE[k],
        },
        seeds=12,
    )
    row = rows_by_claim(recs)["LPSGDM beats SGD with momentum"]
    a = np.array([0.80 + NOISE[k] + 0.01 + 0.002 * (k % 3) for k in range(12)]) * 100
    b = np.array([0.80 + NOISE[k] for k in range(12)]) * 100
    expected = stats.paired_t(a, b)
    assert row.test == "paired t" and row.n == "12 pairs"
    assert row.effect == pytest.approx(expected.effect)
    assert (row.low, row.high) == pytest.approx((expected.low, expected.high))
    assert row.p == pytest.approx(expected.p) and row.p_holm == pytest.approx(expected.p)
    assert row.mde == pytest.approx(expected.mde())
    assert row.verdict == REPRODUCED  # +1.2 points, far from the ±0.5 margin
    # a Welch test on the same numbers would not see it through the shared per-seed luck
    assert stats.welch_t(a, b).p > expected.p


def test_each_verdict_from_records():
    recs = _accuracy_records(
        "digits",
        {
            # AdamW-AGR identical to AdamW up to 0.01 points: equivalent
            "adamw": lambda k: 0.85 + NOISE[k],
            "adamw_agr": lambda k: 0.85 + NOISE[k] + 1e-4 * (k % 2),
            # Adan-AGR clearly worse: refuted
            "adan": lambda k: 0.86 + NOISE[k],
            "adan_agr": lambda k: 0.83 + NOISE[k] + 0.001 * (k % 2),
            # SGDM vs LPSGDM: independent spreads of 3 points: underpowered at 12 seeds
            "lpsgdm": lambda k: 0.80 + 3 * NOISE[k],
            "sgdm": lambda k: 0.80 + 3 * NOISE[k + 20],
        },
        seeds=12,
    )
    rows = rows_by_claim(recs)
    assert rows["AGR improves AdamW"].verdict == EQUIVALENT
    assert rows["AGR improves Adan"].verdict == REFUTED
    assert rows["LPSGDM beats SGD with momentum"].verdict == UNDERPOWERED
    assert rows["LPSGDM beats SGD with momentum"].mde > claims.LPSGDM_EFFECT
    # n for the paper's effect: the pilot power analysis from the spread measured
    lp = rows["LPSGDM beats SGD with momentum"]
    diffs = 300 * (NOISE[:12] - NOISE[20:32])
    assert lp.n_for_paper == stats.seeds_needed(float(np.std(diffs, ddof=1)), claims.LPSGDM_EFFECT)
    assert lp.n_for_paper > 12


def _standardised(n, seed):
    z = np.random.default_rng(seed).normal(size=n)
    return (z - z.mean()) / z.std(ddof=1)


def test_not_reproduced_when_powered_and_holm_across_rows():
    # paired differences 0.3 + 0.894 z points (z: mean 0, sd 1), n = 20: se = 0.2, so
    # t = 1.5 (not significant), the 90% interval reaches 0.65 > margin 0.5 (not equivalent),
    # and the MDE, about 2.9 se = 0.58, is below the paper's 0.68: powered, not reproduced.
    d = 0.3 + math.sqrt(20) * 0.2 * _standardised(20, 3)
    recs = _accuracy_records(
        "digits",
        {
            "lpsgdm": lambda k: 0.80 + NOISE[k] + d[k] / 100,
            "sgdm": lambda k: 0.80 + NOISE[k],
        },
        seeds=20,
    )
    row = rows_by_claim(recs)["LPSGDM beats SGD with momentum"]
    assert row.effect == pytest.approx(0.3, abs=1e-9)
    assert row.mde == pytest.approx(stats.minimum_detectable_effect(0.2, 19))
    assert row.mde < claims.LPSGDM_EFFECT
    assert row.p > 0.05 and row.p_tost > 0.05
    assert row.verdict == NOT_REPRODUCED
    # a second row: Holm doubles the smaller p-value and keeps the order
    recs += _accuracy_records(
        "digits",
        {"adamw": lambda k: 0.85 + NOISE[k], "adamw_agr": lambda k: 0.86 + NOISE[k] + d[k] / 100},
        seeds=20,
    )
    rows = list(rows_by_claim(recs).values())
    ps = [row.p for row in rows]
    assert [row.p_holm for row in rows] == pytest.approx(stats.holm(ps))
    assert min(row.p_holm for row in rows) == pytest.approx(2 * min(ps))


def test_unpaired_arms_fall_back_to_welch():
    recs = _accuracy_records("digits", {"lpsgdm": lambda k: 0.9 + NOISE[k]}, seeds=5)
    recs += [
        record("digits", "sgdm", seed, steps=[0, 10], test_acc=[0.1, 0.8 + NOISE[seed - 50]])
        for seed in range(100, 105)
    ]
    row = rows_by_claim(recs)["LPSGDM beats SGD with momentum"]
    assert row.test == "Welch t" and row.n == "5 / 5"
    assert row.p == pytest.approx(
        stats.welch_t(
            [(0.9 + NOISE[k]) * 100 for k in range(5)],
            [(0.8 + NOISE[k]) * 100 for k in range(50, 55)],
        ).p
    )


def test_one_seed_is_underpowered_not_dropped():
    recs = _accuracy_records("digits", {"lpsgdm": lambda k: 0.99, "sgdm": lambda k: 0.1}, seeds=1)
    row = rows_by_claim(recs)["LPSGDM beats SGD with momentum"]
    assert row.verdict == UNDERPOWERED and row.p is None and math.isinf(row.mde)


def test_arm_variants_and_any():
    recs = _accuracy_records(
        "digits",
        {
            "adamw_agr": lambda k: 0.85 + NOISE[k],
            ("adamw_agr", "agr_until", 37): lambda k: 0.86 + NOISE[k],
            ("lpsgdm", "p_max", 14): lambda k: 0.80 + NOISE[k],
            "lpsgdm": lambda k: 0.84 + NOISE[k],
        },
        seeds=4,
    )
    rows = rows_by_claim(recs)
    assert rows["Stopping AGR late helps (AdamW-AGR)"].treatment == "adamw_agr(agr_until=37)"
    assert rows["Too large a p_max hurts (preset p_max beats p_max 14)"].verdict == REPRODUCED
    assert Arm("adamw_agr", {"agr_until": claims.ANY}).matches(
        group(recs)[0].find("adamw_agr", {"agr_until": 37})[0]
    )


def _grok(optimizer, seed, test_reach, steps=800, train_reach=100, variant=None, lr=0.01):
    gap = None if test_reach is None or train_reach is None else test_reach - train_reach
    return record(
        "grokking",
        optimizer,
        seed,
        steps=[0, steps // 2, steps],
        variant=variant,
        hparams={"lr": lr, **(variant or {})},
        extra={
            "tau": 0.99,
            "train_reach_step": train_reach,
            "test_reach_step": test_reach,
            "gap": gap,
        },
    )


def test_grokking_uses_logrank_with_censoring():
    recs = [_grok("sepnorm", k, 200 + 10 * k) for k in range(6)]
    # lion: two generalise late, two never do, two never even fit: all counted, censored at 800
    recs += [
        _grok("lion", 0, 600),
        _grok("lion", 1, 650),
        _grok("lion", 2, None),
        _grok("lion", 3, None),
        _grok("lion", 4, None, train_reach=None),
        _grok("lion", 5, None, train_reach=None),
    ]
    row = rows_by_claim(recs)["Grokking: SepNorm generalises before Lion"]
    expected = stats.logrank(
        [200 + 10 * k for k in range(6)],
        [True] * 6,
        [600, 650, 800, 800, 800, 800],
        [True, True] + [False] * 4,
    )
    assert row.test == "log-rank" and row.n == "6 / 6"
    assert row.effect == pytest.approx(expected.effect) and row.p == pytest.approx(expected.p)
    assert row.effect > 0 and row.verdict == REPRODUCED
    assert "2/6 generalised" in row.measured and "median > 800" in row.measured


def test_grokking_at_matched_regularisation():
    recs = []
    for wd in (1.0, 2.0):
        recs += [_grok("sepnorm", k, 300, variant={"weight_decay": wd}) for k in range(3)]
        recs += [_grok("lion", k, 300 + 100 * k, variant={"weight_decay": wd}) for k in range(3)]
    recs += [_grok("lion", k, 500, variant={"weight_decay": 4.0}) for k in range(3)]
    names = sorted(row.claim for row in claims.evaluate(group(recs)))
    assert names == [
        "Grokking: SepNorm generalises before Lion at lr·wd = 0.01",
        "Grokking: SepNorm generalises before Lion at lr·wd = 0.02",
    ]


def test_step_size_answer_states_the_verdict():
    recs = _accuracy_records(
        "digits",
        {
            "lpsgdm": lambda k: 0.85 + NOISE[k],
            "sgdm_rms": lambda k: 0.85 + NOISE[k] + 1e-4 * (k % 2),
        },
        seeds=10,
    )
    rows = claims.evaluate(group(recs))
    assert rows[0].verdict == EQUIVALENT
    answer = claims.step_size_answer(rows)
    assert "On digits: no: SGDM given LPSGDM's update-RMS schedule is equivalent" in answer
    assert "Not answered" in claims.step_size_answer([])


def test_markdown_has_every_column_and_the_rule():
    recs = _accuracy_records(
        "digits", {"lpsgdm": lambda k: 0.9 + NOISE[k], "sgdm": lambda k: 0.8 + NOISE[k]}, seeds=3
    )
    text = claims.markdown(claims.evaluate(group(recs)))
    header = text.splitlines()[0]
    for column in ("effect [95% CI]", "MDE", "n for paper", "Holm p", "verdict"):
        assert column in header
    assert "**Rule.**" in text and "TOST" in text and "censored at its budget" in text
    custom = Claim("x", "y", Arm("lpsgdm"), Arm("sgdm"), 5.0, 1.0, "z")
    (row,) = claims.evaluate(group(recs), claims=[custom])
    assert row.paper_effect == 5.0 and row.claim == "x"
