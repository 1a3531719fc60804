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
    prose = " ".join(text.split())  # the rule's line breaks are not part of it
    assert "**Rule.**" in prose and "TOST" in prose and "censored at its budget" in prose
    custom = Claim("x", "y", Arm("lpsgdm"), Arm("sgdm"), 5.0, 1.0, "z")
    (row,) = claims.evaluate(group(recs), claims=[custom])
    assert row.paper_effect == 5.0 and row.claim == "x"


# --------------------------------------------------------------------------------------------
# The new tasks' metrics: relative, lower is better; the primary metric per section


def _metric_records(task, metric, arms, seeds, task_label=None):
    """Like ``_accuracy_records`` for a lower-is-better ``metric`` (a test accuracy is recorded
    too, so a claim on accuracy would apply if the primary metric did not stop it)."""
    out = []
    for arm, value in arms.items():
        optimizer, variant = (arm[0], {arm[1]: arm[2]}) if isinstance(arm, tuple) else (arm, {})
        for seed in range(seeds):
            rec = record(
                task, optimizer, seed, steps=[0, 10], variant=variant, test_acc=[0.1, 0.5 + seed]
            )
            rec["result"]["curves"][metric] = [9.0, value(seed)]
            rec["result"]["final"][metric] = value(seed)
            if task_label is not None:
                rec["task_label"] = task_label
            out.append(rec)
    return out


def test_bits_per_char_effect_is_the_relative_paired_reduction():
    # AGR lowers every seed's bpc by exactly 1% of that seed's AdamW value: the effect, the mean
    # of 100 (b_k - a_k) / mean(b), is exactly 1.0 (percent)
    def base(k):
        return 2.5 + NOISE[k]

    recs = _metric_records(
        "charlm",
        "test_bpc",
        {
            "adamw": base,
            "adamw_agr": lambda k: 0.99 * base(k),
            # SepNorm 2% *higher* than Lion: refuted; Lion has the shared luck plus a wobble
            "lion": lambda k: base(k) + 0.001 * (k % 3),
            "sepnorm": lambda k: 1.02 * (base(k) + 0.001 * (k % 3)),
        },
        seeds=12,
    )
    rows = rows_by_claim(recs)
    agr = rows["AGR improves AdamW (language model)"]
    a = np.array([0.99 * base(k) for k in range(12)])
    b = np.array([base(k) for k in range(12)])
    expected = stats.paired_t(-100 * a / b.mean(), -100 * b / b.mean())
    assert agr.effect == pytest.approx(1.0) and agr.effect == pytest.approx(expected.effect)
    assert agr.p == pytest.approx(expected.p) and agr.verdict == REPRODUCED
    assert agr.metric == claims.BPC and "adamw_agr 2.4" in agr.measured
    assert rows["SepNorm beats Lion (language model)"].effect == pytest.approx(-2.0)
    assert rows["SepNorm beats Lion (language model)"].verdict == REFUTED
    # the accuracy claims do not read the language model's next-character accuracy
    assert "AGR improves AdamW" not in rows and "SepNorm beats Lion" not in rows


def test_ddpm_claims_use_the_section_s_distance():
    def agr(k):
        return (0.05 + NOISE[k] / 10) * (1 - 1e-4 * (k % 2))

    arms = {
        "adan": lambda k: 0.05 + NOISE[k] / 10,
        "adan_agr": agr,
        ("adan_agr", "agr_until", 900): lambda k: 0.9 * agr(k),  # 10% lower every seed
    }
    swd = _metric_records("ddpm", "test_swd", arms, seeds=10)
    fd = _metric_records("ddpm", "test_fd", arms, seeds=10, task_label="ddpm[dataset=digits]")
    rows = claims.evaluate(group(swd + fd))
    by_task = {(row.claim, row.task): row for row in rows}
    late_swd = by_task["Stopping AGR late helps (Adan-AGR, diffusion)", "ddpm"]
    assert late_swd.metric == claims.SWD and late_swd.effect == pytest.approx(10.0)
    assert late_swd.verdict == REPRODUCED
    assert by_task[
        "Stopping AGR late helps (Adan-AGR, diffusion)", "ddpm[dataset=digits]"
    ].metric == (claims.FD)
    same = by_task["AGR improves Adan (diffusion)", "ddpm"]
    assert same.effect == pytest.approx(0.005, abs=1e-3) and same.verdict == EQUIVALENT
    assert {row.metric for row in rows} == {claims.SWD, claims.FD}


def test_batch_size_claim_reads_the_scaled_lr_arms_of_each_batch():
    recs = _accuracy_records(
        "mnist1d",
        {
            ("adamw", "lr", 0.004): lambda k: 0.90 + NOISE[k],
            ("sepnorm", "lr", 0.0012): lambda k: 0.92 + NOISE[k] + 0.001 * (k % 2),
        },
        seeds=10,
    )
    for rec in recs:
        rec["task_label"] = "mnist1d[batch_size=400]"
    recs += _accuracy_records(
        "mnist1d", {"adamw": lambda k: 0.9 + NOISE[k], "sepnorm": lambda k: 0.9 + NOISE[k]}, 10
    )
    rows = {(row.claim, row.task): row for row in claims.evaluate(group(recs))}
    scaled = rows[
        "SepNorm beats AdamW at a larger batch, lr scaled linearly", "mnist1d[batch_size=400]"
    ]
    assert scaled.effect == pytest.approx(2.05) and scaled.verdict == REPRODUCED
    assert ("SepNorm beats AdamW", "mnist1d") in rows  # batch 100: the plain comparison
    assert ("SepNorm beats AdamW", "mnist1d[batch_size=400]") not in rows


# --------------------------------------------------------------------------------------------
# The quadratic's bound checks


def _quadratic(optimizer, seed, losses, lr, problem="strong", **hparams):
    hparams = {
        "lr": lr,
        "lr_schedule": "constant",
        "warmup_frac": 0.0,
        "weight_decay": 0.0,
        **hparams,
    }
    rec = record(
        "quadratic",
        optimizer,
        seed,
        steps=[0, len(losses) - 1],
        hparams=hparams,
        extra={"problem": problem},
    )
    rec["result"]["curves"] = {"step": list(range(len(losses))), "train_loss": losses}
    rec["result"]["final"] = {"train_loss": losses[-1]}
    return rec


def test_late_loss_max_is_the_smallest_late_pair_maximum():
    assert claims.late_loss_max([5.0, 4.0, 3.0, 2.0, 1.0, 2.0, 0.5, 3.0], tail=0.5) == 2.0
    assert math.isnan(claims.late_loss_max([1.0]))


def test_bound_checks_hold_refute_and_skip_momentum():
    lr = 0.1  # NormGD's bound on diag(1, 0.01): lr^2 * 1 / 8 = 1.25e-3
    # the Arora et al. 2-cycle at C = 0.3: 0.5 C^2 lr^2 and 0.5 (1 - C)^2 lr^2, max 2.45e-3
    cycle = [0.5 * 0.3**2 * lr**2, 0.5 * 0.7**2 * lr**2] * 20
    recs = [_quadratic("normsgd", k, [1.0, *cycle], lr, betas=[0.0, 0.0]) for k in range(2)]
    # signGD settled below its bound on diag(1, 0.01), lr^2 tr A / 8 = 1.2625e-3: refuted
    recs += [_quadratic("signsgd", 0, [1.0] + [1e-3] * 40, lr)]
    # NormGD with momentum: outside the lemma's setting, no row
    recs += [_quadratic("normsgd", 0, [1.0] + [1e-9] * 40, lr, betas=[0.9, 0.99], problem="weak")]
    rows = {(row.claim, row.task): row for row in claims.evaluate(group(recs))}
    norm = rows["NormGD's late loss is at least lr²·λmax/8", "quadratic"]
    assert norm.verdict == REPRODUCED and norm.n == "2 runs"
    assert norm.effect == pytest.approx(math.log(0.5 * 0.49 / (1 / 8)))
    assert norm.p_holm is None
    sign = rows["signGD's late loss is at least lr²·tr A/8", "quadratic"]
    assert sign.verdict == REFUTED and sign.effect == pytest.approx(math.log(1e-3 / 1.2625e-3))
    assert len(rows) == 2


def test_sign_gd_run_on_the_quadratic_respects_its_bound():
    from geoptim.bench.tasks.quadratic import QuadraticTask

    hparams = {"lr": 0.03, "lr_schedule": "constant", "warmup_frac": 0.0, "weight_decay": 0.0}
    result = QuadraticTask(problem="weak").run("signsgd", hparams, 0, {"steps": 300})
    rec = _quadratic("signsgd", 0, result["curves"]["train_loss"], 0.03, problem="weak")
    (row,) = claims.bound_rows(group([rec]))
    # lemma 5.2 on diag(1, 0.5): late L^max >= 0.03^2 * 1.5 / 8, and a run can sit on it
    assert row.verdict == REPRODUCED and row.effect >= 0


def test_effect_notes_name_each_claim_once_though_it_is_tested_on_two_metrics():
    lines = claims.effect_notes().splitlines()
    diffusion = [line for line in lines if line.startswith("- AGR improves Adan (diffusion)")]
    assert len(diffusion) == 1 and diffusion[0].count("AGR improves Adan (diffusion)") == 1
    names = {claim.name for claim in (*claims.CLAIMS, *claims.BOUND_CLAIMS)}
    assert all(any(name in line for line in lines) for name in names)
