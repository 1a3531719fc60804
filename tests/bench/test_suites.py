"""The suites' design: paired seeds, at least 10 (quick) / 20 (standard) seeds for every arm of
the headline comparisons, the step-size control arms, the matched lr·wd sweep, the plan's time
estimate."""

from __future__ import annotations

import pytest

from geoptim.bench import claims, suites
from geoptim.bench.presets import Presets
from geoptim.bench.records import RunSpec
from geoptim.bench.results import Series
from geoptim.bench.suites import build_specs, select
from geoptim.cli.common import make_task

HEADLINE = {  # (task label, series label) of every arm of the headline comparisons
    ("digits", "lpsgdm"),
    ("digits", "sgdm"),
    ("digits", "sgdm_rms"),
    ("digits", "lpsgdm(p_max=2.0)"),
    ("digits", "lpsgdm(p_schedule=constant)"),
    ("mnist1d", "lpsgdm"),
    ("mnist1d", "sgdm"),
    ("mnist1d", "sgdm_rms"),
    ("mnist1d", "lpsgdm(p_max=2.0)"),
    ("mnist1d", "lpsgdm(p_schedule=constant)"),
    ("digits", "adamw"),
    ("digits", "adamw_agr"),
    ("digits", "adamw_agr(agr_moments=first)"),
    ("digits", "adan"),
    ("digits", "adan_agr"),
    ("grokking", "adamw"),
    ("grokking", "lion"),
    ("grokking", "sepnorm"),
    ("grokking", "ortsepnorm"),
}


def _specs(suite: str) -> list[RunSpec]:
    return build_specs(select(suite), Presets(), suite, make_task)


def _seeds(specs: list[RunSpec]) -> dict[tuple[str, str], set[int]]:
    seeds: dict[tuple[str, str], set[int]] = {}
    for spec in specs:
        label = spec.label.removesuffix(" [tuned]")
        seeds.setdefault((spec.task_label, label), set()).add(spec.seed)
    return seeds


@pytest.mark.parametrize(("suite", "least"), [("quick", 10), ("standard", 20)])
def test_every_headline_arm_has_enough_paired_seeds(suite, least):
    specs = _specs(suite)
    assert len({s.run_id for s in specs}) == len(specs)
    seeds = _seeds(specs)
    for arm in HEADLINE:
        # paired: every arm runs seeds 0..n-1, so seed k is shared by all arms
        assert seeds[arm] == set(range(len(seeds[arm]))), arm
        assert len(seeds[arm]) >= (10 if arm[0] == "grokking" and suite == "standard" else least), (
            arm
        )


def test_sgdm_rms_takes_lpsgdm_hyper_parameters():
    specs = _specs("quick")
    for task in ("digits", "mnist1d"):
        lp = next(s for s in specs if s.task == task and s.label == "lpsgdm" and s.seed == 0)
        rms = next(s for s in specs if s.task == task and s.optimizer == "sgdm_rms" and s.seed == 0)
        assert rms.hparams == lp.hparams


def test_the_transformer_is_in_full_and_standard_has_a_matched_lr_wd_sweep():
    """The one-layer grokking transformer (~14 CPU-min a run) is ``full``'s, not ``standard``'s
    (whose 60 minutes it would take half of)."""
    assert any(s.task_label == "grokking[model=transformer]" for s in _specs("full"))
    specs = _specs("standard")
    assert not any(s.task_label == "grokking[model=transformer]" for s in specs)
    sweep: dict[str, set[float]] = {}
    for s in specs:
        if s.task_label == "grokking" and set(s.variant) == {"weight_decay"}:
            sweep.setdefault(s.optimizer, set()).add(
                round(s.hparams["lr"] * s.hparams["weight_decay"], 12)
            )
    assert set(sweep) == set(suites.GROKKING)
    for products in sweep.values():  # a sweep point equal to the preset is the preset's run
        assert products <= set(suites.GROKKING_LR_WD)
        assert len(products) >= len(suites.GROKKING_LR_WD) - 1


class _Timed:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def estimated_seconds(self, budget, optimizer=None):
        return self.seconds * budget["steps"] * (2 if optimizer == "sgdm_rms" else 1)


def test_plan_estimate_uses_the_task_cost_and_workers():
    specs = [
        RunSpec(task="t", optimizer=opt, hparams={}, seed=k, budget={"steps": 10})
        for opt in ("sgdm", "sgdm_rms")
        for k in range(3)
    ]
    text = suites.plan_text(specs, lambda name, overrides: _Timed(0.5), workers=2)
    # 3 x 5 s + 3 x 10 s (sgdm_rms replays its LPSGDM run) = 45 s, over 2 workers 22.5 s
    assert "t | sgdm | 3 | 5.0" in text and "t | sgdm_rms | 3 | 10.0" in text
    assert text.endswith(
        "6 runs, 0.8 CPU-min single-thread; estimated 0.4 min wall with 2 "
        "workers (before any run is skipped)"
    )
    fallback = suites.plan_text(specs[:1], lambda name, overrides: object(), workers=1)
    assert f"t | sgdm | 1 | {10.0:.1f}" in fallback  # no estimate: the fallback table's default


def test_quick_suite_is_planned_within_ten_minutes_on_two_workers():
    specs = _specs("quick")
    tasks = {}
    total = 0.0
    for spec in specs:
        if spec.task_label not in tasks:
            tasks[spec.task_label] = make_task(spec.task, spec.task_overrides)
        total += suites.estimated_seconds(spec, tasks[spec.task_label])
    assert total / 2 <= 600


def test_seeds_for_power_reads_the_pilot(tmp_path):
    import json

    rows = [
        {"claim": "LPSGDM beats SGD with momentum", "task": "digits", "n_for_paper": 31},
        {"claim": "AGR improves AdamW", "task": "digits", "n_for_paper": None},
    ]
    (tmp_path / "claims.json").write_text(json.dumps(rows))
    assert suites.seeds_for_power(tmp_path / "claims.json") == {
        ("LPSGDM beats SGD with momentum", "digits"): 31,
        ("AGR improves AdamW", "digits"): None,
    }


def _series_by_task(specs: list[RunSpec]) -> dict[str, list[Series]]:
    """The suite's series (one per task label and setting), as the claims see them."""
    found: dict[tuple[str, str], Series] = {}
    for spec in specs:
        found.setdefault(
            (spec.task_label, spec.label),
            Series(spec.label, spec.optimizer, spec.variant, spec.preset, spec.hparams),
        )
    by_task: dict[str, list[Series]] = {}
    for (task, _), series in found.items():
        by_task.setdefault(task, []).append(series)
    return by_task


NEW_TASK_CLAIMS = {  # claim -> the task labels of the standard suite it must be tested on
    "LPSGD beats plain SGD": {"digits"},
    "SepNorm beats Lion": {"digits", "mnist1d", "vit"},
    "SepNorm beats AdamW": {"digits", "mnist1d", "vit"},
    "SepNorm beats AdamW at a larger batch, lr scaled linearly": {
        "mnist1d[batch_size=400]",
        "mnist1d[batch_size=800]",
    },
    "AGR improves AdamW": {"digits", "vit"},
    "AGR improves AdamW (language model)": {"charlm"},
    "AGR improves AdamW at weight decay 0 (language model)": {"charlm"},
    "AGR improves AdamW at weight decay 1 (language model)": {"charlm"},
    "SepNorm beats Lion (language model)": {"charlm"},
    "SepNorm beats AdamW (language model)": {"charlm"},
    "AGR improves Adan (diffusion)": {"ddpm"},
    "Stopping AGR late helps (Adan-AGR, diffusion)": {"ddpm"},
}


def test_standard_runs_both_arms_of_every_new_claim_on_its_tasks():
    by_task = _series_by_task(_specs("standard"))
    for name, tasks in NEW_TASK_CLAIMS.items():
        for claim in (c for c in claims.CLAIMS if c.name == name):
            for task in tasks:
                if claim.metric == claims.FD:
                    continue  # ddpm on digits: the full suite's
                series = by_task[task]
                assert any(claim.treatment.matches(s) for s in series), (name, task)
                assert any(claim.control.matches(s) for s in series), (name, task)


def test_new_tasks_have_ten_paired_seeds_and_fit_the_budget():
    specs = build_specs(suites._new_tasks(suites.NEW_TASK_SEEDS), Presets(), "standard", make_task)
    for (task, label), seeds in _seeds(specs).items():
        least = 5 if task == "charlm" and "weight_decay" in label else 10
        assert seeds == set(range(len(seeds))) and len(seeds) >= least, (task, label)
    tasks: dict[str, object] = {}
    seconds = 0.0
    for spec in specs:
        task = tasks.setdefault(spec.task_label, make_task(spec.task, spec.task_overrides))
        seconds += suites.estimated_seconds(spec, task)
    assert seconds <= 25 * 60
    assert not {s.task for s in _specs("quick")} & {"charlm", "vit", "ddpm"}


def test_batch_size_scales_the_lr_linearly_and_agr_stops_at_60_percent():
    specs = _specs("standard")
    base = {
        s.optimizer: s.hparams["lr"] for s in specs if s.task_label == "mnist1d" and not s.variant
    }
    scaled = [s for s in specs if s.task_label.startswith("mnist1d[batch_size=")]
    assert {s.task_overrides["batch_size"] for s in scaled} == {400, 800}
    for s in scaled:
        factor = s.task_overrides["batch_size"] / 100
        assert s.hparams["lr"] == pytest.approx(factor * base[s.optimizer]), s.label
        assert s.variant == {"lr": s.hparams["lr"]}
    late = {s.hparams["agr_until"] for s in specs if s.task == "ddpm" and s.variant}
    assert late == {round(0.6 * 1500)}
