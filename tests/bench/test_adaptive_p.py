"""Issue 15 in the benchmark: the curvature-adaptive p schedule in the training loop, its
shuffled replay control, the premise statistics and the adaptive-p claims."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geoptim.analysis.curvature import measure
from geoptim.bench import claims
from geoptim.bench.report import premise_sentence, run_trends
from geoptim.bench.results import group
from geoptim.bench.stats import sign_test, spearman
from geoptim.bench.suites import ADAPTIVE_P, SHUFFLED_P
from geoptim.bench.training import ReplayPScheduler, shuffled_blocks, train
from tests.bench.test_training import ToyTask

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_records import record

HPARAMS = {"lr": 0.05, "p_max": 6.0, "p_estimator": "gradient", "p_interval": 2}
BUDGET = {"epochs": 6}  # 18 steps of the toy task


def test_shuffled_blocks_permutes_whole_blocks() -> None:
    values = [float(v) for v in range(7)]
    blocks = ([0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0])
    orders = [list(itertools.chain(*order)) for order in itertools.permutations(blocks)]
    shuffled = shuffled_blocks(values, 3, seed=4)
    assert shuffled in orders and sorted(shuffled) == values
    assert shuffled_blocks(values, 3, seed=4) == shuffled  # seeded
    assert len({tuple(shuffled_blocks(values, 3, seed)) for seed in range(8)}) > 1


def test_replay_scheduler_sets_p_per_step() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1)], lr=0.1)
    optimizer.param_groups[0]["p"] = 0.0
    replay = ReplayPScheduler(optimizer, [5.0, 4.0, 3.0])
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["p"])
        replay.step()
    assert seen == [5.0, 4.0, 3.0, 3.0]  # past the end the last value stays


def test_curvature_schedule_in_the_loop_logs_p_and_the_estimator() -> None:
    result = train(ToyTask(), "lpsgdm", {**HPARAMS, "p_schedule": "curvature"}, 1, BUDGET)
    p_steps, extra = result["extra"]["p_steps"], result["extra"]
    assert len(p_steps) == result["steps"] == 18
    assert p_steps[:2] == [6.0, 6.0]  # p_max until the first estimate (after step 2)
    assert all(2.0 <= p <= 6.0 for p in p_steps) and len(set(p_steps)) > 2
    assert all(p_steps[k] == p_steps[k + 1] for k in range(0, 18, 2))  # changes every 2 steps
    assert extra["estimator_s"] > 0 and extra["estimator_fraction"] > 0
    assert result["curves"]["p"][0] == 6.0 and result["curves"]["p"][1] == p_steps[3]
    for schedule in ("curvature", "shuffled"):
        with pytest.raises(ValueError, match="needs p_max"):
            train(ToyTask(), "sgdm", {"lr": 0.05, "p_schedule": schedule}, 1, BUDGET)
    cosine = train(ToyTask(), "lpsgdm", {"lr": 0.05, "p_max": 6.0}, 1, BUDGET)["extra"]
    assert "p_steps" not in cosine and "estimator_s" not in cosine


def test_hessian_estimator_in_the_loop() -> None:
    hparams = {**HPARAMS, "p_schedule": "curvature", "p_estimator": "hessian", "p_interval": 6}
    p_steps = train(ToyTask(), "lpsgdm", hparams, 1, BUDGET)["extra"]["p_steps"]
    assert p_steps[:12] == [6.0] * 12  # the first estimate (step 6) calibrates a_hi to p_max
    assert all(2.0 <= p <= 6.0 for p in p_steps) and len(set(p_steps)) > 1


def test_shuffled_control_replays_the_adaptive_runs_p_values() -> None:
    adaptive = train(ToyTask(), "lpsgdm", {**HPARAMS, "p_schedule": "curvature"}, 1, BUDGET)
    control = train(ToyTask(), "lpsgdm", {**HPARAMS, "p_schedule": "shuffled"}, 1, BUDGET)
    ours, theirs = adaptive["extra"]["p_steps"], control["extra"]["p_steps"]
    assert sorted(theirs) == sorted(ours)  # the same multiset of p values
    assert theirs == shuffled_blocks(ours, 2, 1) and theirs != ours
    assert "estimator_s" not in control["extra"]
    # same start and batches; a different p order changes the trajectory
    assert control["curves"]["train_loss"][0] == adaptive["curves"]["train_loss"][0]
    assert control["curves"]["train_loss"][-1] != adaptive["curves"]["train_loss"][-1]


# --------------------------------------------------------------------------------------------
# The premise statistics


def _entry(epoch: int, lambda_max: float, bulk: float, negative: float = 0.0) -> dict:
    """A curvature record whose SLQ nodes are (lambda_max, bulk) with weights (0, 1)."""
    return {
        "epoch": epoch,
        "top_eigenvalues": [lambda_max],
        "nodes": [bulk, lambda_max],
        "weights": [1.0, 0.0],
        "anisotropy": lambda_max / bulk,
        "negative_mass": negative,
    }


def test_spearman_and_sign_test_known_answers() -> None:
    assert spearman([0, 1, 2, 3], [9, 4, 1, 0]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([0, 1, 2, 3], [1, 1, 2, 2]) == pytest.approx(math.sqrt(0.8))  # ties
    assert math.isnan(spearman([0, 1, 2], [5, 5, 5])) and math.isnan(spearman([0, 1], [1, 2]))
    assert sign_test([-1, -2, -0.5, -3, -1, -1]) == (6, 0, pytest.approx(2 / 64))
    assert sign_test([-1, 1, 0.5, math.nan, 0.0]) == (1, 2, 1.0)


def test_premise_on_records_with_a_known_trend() -> None:
    falling = [_entry(e, 10.0 + e, 0.1 * (1 + e) ** 2, negative=0.1 / (1 + e)) for e in range(5)]
    assert measure(falling[2], "bulk") == pytest.approx(0.9)
    assert run_trends(falling) == {
        "anisotropy": pytest.approx(-1.0),
        "lambda_max": pytest.approx(1.0),
        "bulk": pytest.approx(1.0),
    }
    runs = [(opt, seed, falling) for opt in ("sgdm", "lpsgdm") for seed in range(3)]
    sentence = premise_sentence("toy", runs)
    assert sentence.startswith("**toy: the anisotropy falls over training, as the paper assumes.**")
    assert "falls over training in 6 of 6 runs and rises in 0" in sentence
    assert "sgdm 3/3, lpsgdm 3/3" in sentence and "λmax falls in 0 and rises in 6" in sentence
    assert "from 0.100 to 0.020" in sentence
    rising = [_entry(e, 10.0 * (1 + e), 1.0) for e in range(5)]
    mixed = runs[:3] + [("lpsgdm", s, rising) for s in range(3)]
    assert "no consistent trend" in premise_sentence("toy", mixed)
    assert "rises over training, against the premise" in premise_sentence("toy", [mixed[3]] * 6)


# --------------------------------------------------------------------------------------------
# The adaptive-p claims


def _arm_records(variant, accuracy, fraction=None, seeds=10):
    """Runs of 100 steps, checkpoints every 25, test accuracy rising linearly to ``accuracy``
    (plus per-seed luck shared by the arms)."""
    luck = np.random.default_rng(0).normal(0, 0.01, seeds)
    out = []
    for seed in range(seeds):
        final = accuracy + luck[seed]
        curve = [0.1, 0.1 + 0.25 * (final - 0.1) * 1, 0.1 + 0.5 * (final - 0.1), final - 0.1, final]
        extra = {} if fraction is None else {"estimator_fraction": fraction, "p_steps": [5.0]}
        out.append(
            record(
                "digits",
                "lpsgdm",
                seed,
                steps=[0, 25, 50, 75, 100],
                variant=variant,
                test_acc=curve,
                extra=extra,
            )
        )
    return out


def test_charged_reads_the_curve_at_the_equal_cost_step() -> None:
    (section,) = group(_arm_records(ADAPTIVE_P, 0.8, fraction=1 / 3, seeds=2))
    (series,) = section.series
    charged, fraction = claims.charged(series)
    assert fraction == pytest.approx(1 / 3)
    # 100 / (1 + 1/3) = 75 steps: the checkpoint at 75 (final - 0.1)
    assert charged.final("test_acc") == pytest.approx(series.final("test_acc") - 0.1)
    assert series.final("test_acc")[0] == pytest.approx(
        0.8 + np.random.default_rng(0).normal(0, 0.01, 2)[0]
    )
    (plain,) = group(_arm_records({}, 0.8, seeds=2))[0].series
    assert claims.charged(plain) == (plain, 0.0)


def _rows(adaptive, cosine, control):
    records = (
        _arm_records(ADAPTIVE_P, adaptive, fraction=0.02)
        + _arm_records({}, cosine)
        + _arm_records(SHUFFLED_P, control)
    )
    rows = claims.evaluate(group(records), claims.ADAPTIVE_CLAIMS)
    return {(row.claim, row.metric): row for row in rows}, rows


def test_adaptive_claims_and_the_answer() -> None:
    found, rows = _rows(adaptive=0.85, cosine=0.80, control=0.85)
    steps = found[("Adaptive p beats cosine p", claims.ACCURACY)]
    timed = found[("Adaptive p beats cosine p at equal wall-clock", claims.EQUAL_TIME)]
    assert steps.verdict == claims.REPRODUCED and steps.effect == pytest.approx(5.0)
    # charged 2%: read at step 100 / 1.02, on the last segment of the curve (0.1 over 25 steps)
    assert timed.effect == pytest.approx(5.0 - (100 - 100 / 1.02) / 25 * 10, abs=1e-9)
    assert timed.note == "curvature charged 2.0% of a step per step; curvature: mean p 5.00"
    assert found[("Adaptive p beats its shuffled control", claims.ACCURACY)].verdict == (
        claims.EQUIVALENT
    )
    answer = claims.adaptive_answer(rows)
    assert "curvature is not what drives the gain" in answer
    found, rows = _rows(adaptive=0.85, cosine=0.80, control=0.80)
    assert "measured curvature helps" in claims.adaptive_answer(rows)
    found, rows = _rows(adaptive=0.80, cosine=0.80, control=0.80)
    assert "adaptive p is equivalent to cosine p" in claims.adaptive_answer(rows)
    found, rows = _rows(adaptive=0.80, cosine=0.85, control=0.80)
    assert "cosine p beats adaptive p" in claims.adaptive_answer(rows)
    assert "Not answered" in claims.adaptive_answer([])


def test_standard_suite_arms_and_the_control_counted_twice() -> None:
    from geoptim.bench import suites
    from geoptim.bench.presets import Presets
    from geoptim.bench.records import RunSpec
    from geoptim.cli.common import make_task

    specs = suites.build_specs(suites.select("standard"), Presets(), "standard", make_task)
    adaptive = {
        (s.task, s.hparams["p_schedule"]) for s in specs if s.variant in (ADAPTIVE_P, SHUFFLED_P)
    }
    assert adaptive == {(t, p) for t in ("digits", "mnist1d") for p in ("curvature", "shuffled")}
    premise = [s for s in specs if s.kind == "curvature"]
    assert {s.task for s in premise} == {"digits", "mnist1d", "vit"}
    assert all(s.budget["slq_probes"] >= 10 and s.budget["mode"] == "eval" for s in premise)
    assert {s.seed for s in premise} == {0, 1, 2}

    class Timed:
        def estimated_seconds(self, budget, optimizer=None):
            return 1.5

    base = RunSpec(
        task="t", optimizer="lpsgdm", hparams={"p_schedule": "curvature"}, seed=0, budget={}
    )
    control = RunSpec(
        task="t", optimizer="lpsgdm", hparams={"p_schedule": "shuffled"}, seed=0, budget={}
    )
    assert suites.estimated_seconds(base, Timed()) == 1.5
    assert suites.estimated_seconds(control, Timed()) == 3.0  # it replays the adaptive run
