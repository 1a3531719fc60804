"""The benchmark suites: which (task, optimizer, hyper-parameters, seed) runs make each one.

A suite is a list of :class:`Experiment`. An experiment is either a *comparison* (several
optimizers with their presets on one task, the papers' tables) or a *sweep* (one optimizer with
some hyper-parameters set on purpose: ``p_max`` values, AGR switched off late, a weight-decay
sweep at fixed ``lr * wd``). Every claim in :mod:`geoptim.bench.claims` reads the runs of one or
two experiments. Seeds are paired: seed k gives every arm the same initialisation and data order,
so every comparison is a paired test over the seeds both arms ran.

* ``quick`` (the README's main job, <= 10 min on 2 cores with 2 workers): 10 paired seeds
  for every arm of every comparison: LPSGDM vs SGDM and the step-size controls (``sgdm_rms``,
  fixed p = 2, p fixed at p_max) on digits and MNIST-1D, AdamW and Adan with and without AGR
  and AGR's variants on digits, the p_max = 14 arm, the grokking MLP, the 2-D quadratics.
* ``standard`` (<= 60 min on 2 cores): 20 seeds for the same comparisons, AdamW / Lion /
  SepNorm beside them, the p_max sweep, the grokking MLP's weight-decay sweep (the
  same ``lr * wd`` values for every optimizer) and the canonical one-layer transformer (one seed
  per optimizer: a 3000-step run costs ~14 CPU-min, so its rows are descriptive); and issue 15:
  the premise of the cosine p schedule (the Hessian's anisotropy over training for SGDM and
  LPSGDM, 3 seeds, on digits, MNIST-1D and the ViT; :func:`_premise`) and the adaptive-p
  comparison (LPSGDM with :class:`geoptim.CurvaturePScheduler` and its shuffled control, 20
  seeds on digits and MNIST-1D, beside the cosine and fixed-p arms; :func:`_adaptive_p`).
* ``full``: GPU scale (CIFAR-10/100, the transformer with 10 seeds, curvature and momentum
  tracing), the same protocol.

Seeds per comparison come from a power analysis: ``n for paper`` in the report's claims table is
the number of paired seeds that gives 80% power for the paper's effect at the spread a run
measured; :func:`seeds_for_power` reads it from a report directory's ``claims.json``.

Pilot (2026-12-01; ``geoptim bench --suite quick --tasks digits mnist1d --optimizers lpsgdm sgdm
sgdm_rms --seeds 5 --workers 1``, the papers' presets, on the shared 2-core machine): n for the
paper's 0.68 points, paired, at the sd of the per-seed differences measured: LPSGDM vs SGDM 889
(digits, sd 7.2 points) and 78 (MNIST-1D); cosine vs SGDM on LPSGDM's update-RMS schedule 77
(digits) and 20 (MNIST-1D); cosine vs p fixed at p_max 37 and 9; vs fixed p = 2 441 and 247 (the
fixed-p = 2 arm barely trains at LPSGDM's lr: 9-12% accuracy, a difference of 34-63 points that
needs no power). The grokking pilot (4 seeds per optimizer, the MLP's 400-step budget) had no run
that fitted, so no spread to plan from. Hence the floors: 10 paired seeds in ``quick`` (MDE about
one sd of the differences), 20 in ``standard`` (enough for the MNIST-1D step-size control at
the pilot's spread); on digits no CPU suite reaches the paper's 0.68 points, and the report says
so (*underpowered*, with the MDE reached).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from geoptim.bench.presets import Presets
from geoptim.bench.records import RunSpec

Variant = dict[str, Any]
VariantFn = Callable[[Any, dict[str, Any]], Variant]
"""A variant computed from the task object and the run's budget (e.g. "AGR until half of the
steps")."""


@dataclass(frozen=True)
class Experiment:
    """One block of a suite.

    ``variants`` are hyper-parameters applied over each optimizer's preset, one set of runs per
    variant; ``{}`` means the preset as is. ``budget`` overrides keys of the task's default
    budget for the suite. ``kind`` is the run kind (:data:`geoptim.bench.runner.EXECUTORS`):
    ``"train"``, or an analysis experiment. ``lr_wd``: a weight-decay sweep, one variant per
    value with ``weight_decay = value / lr`` of each optimizer's preset, so every optimizer runs
    at the same decoupled shrink per step.
    """

    name: str
    task: str
    optimizers: tuple[str, ...]
    seeds: int
    task_overrides: dict[str, Any] = field(default_factory=dict)
    variants: tuple[Variant | VariantFn, ...] = ({},)
    budget: dict[str, Any] = field(default_factory=dict)
    kind: str = "train"
    lr_wd: tuple[float, ...] = ()

    @property
    def is_sweep(self) -> bool:
        return bool(self.lr_wd) or any(callable(variant) or variant for variant in self.variants)


def agr_until_fraction(fraction: float) -> VariantFn:
    """A variant switching AGR off after ``fraction`` of the run's optimizer steps."""

    def variant(task: Any, budget: dict[str, Any]) -> Variant:
        return {"agr_until": max(1, round(fraction * total_steps(task, budget)))}

    return variant


def total_steps(task: Any, budget: dict[str, Any]) -> int:
    """The number of optimizer steps ``budget`` gives on ``task``."""
    from geoptim.bench.training import budget_steps

    if "steps" in budget:
        return int(budget["steps"])
    steps_per_epoch = task.make_data(0).steps_per_epoch
    if budget.get("batches_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(budget["batches_per_epoch"]))
    return budget_steps(budget, steps_per_epoch)[0]


LPSGDM_CONTROLS = ("lpsgdm", "sgdm", "sgdm_rms")
"""LPSGDM, SGDM, and SGDM driven by LPSGDM's measured update-RMS schedule (the step-size
control); with :data:`FIXED_P` the arms of the step-size question."""
FIXED_P = ({}, {"p_max": 2.0}, {"p_schedule": "constant"})
"""The cosine p schedule (the preset), fixed p = 2, and p fixed at p_max."""
OTHERS = ("adamw", "lion", "sepnorm")
GROKKING = ("adamw", "lion", "sepnorm", "ortsepnorm")
AGR = ("adamw", "adamw_agr")
ADAN = ("adan", "adan_agr")
AGR_VARIANTS = ({"agr_moments": "first"},)
QUADRATIC = ("sgd", "signsgd", "normsgd", "lpsgd")
P_MAX = (4.0, 9.0, 14.0)
"""The p_max sweep beside the preset's 6 (and fixed p = 2)."""
GROKKING_LR_WD = (1e-3, 2e-3, 5e-3, 1e-2)
"""The grokking weight-decay sweep as lr * wd (decoupled shrink per step), the same for every
optimizer so the gap ordering is compared at matched regularisation: around the SepNorm paper's
AdamW (lr 1e-3, wd 1) and Lion / SepNorm (lr 1e-3, wd 5) products."""


def _step_size(task: str, seeds: int) -> tuple[Experiment, ...]:
    """LPSGDM vs SGDM and the step-size controls on ``task``."""
    return (
        Experiment("lpsgdm-vs-sgdm", task, LPSGDM_CONTROLS, seeds=seeds),
        Experiment("fixed-p", task, ("lpsgdm",), seeds=seeds, variants=FIXED_P[1:]),
    )


def _agr(seeds: int) -> tuple[Experiment, ...]:
    """AdamW and Adan with and without AGR, AGR stopped half-way and first-moment AGR."""
    return (
        Experiment("agr", "digits", AGR + ADAN, seeds=seeds),
        Experiment(
            "agr-variants",
            "digits",
            ("adamw_agr",),
            seeds=seeds,
            variants=(agr_until_fraction(0.5), *AGR_VARIANTS),
        ),
    )


PREMISE_SEEDS = 3
PREMISE_SPECTRUM = {"mode": "eval", "k": 1, "slq_probes": 10, "slq_steps": 12, "trace_samples": 10}
"""The premise's per-epoch measurement: full-batch eval-mode Hessian of a fixed training subset,
lambda_max by Lanczos, the bulk by SLQ with 10 probes, the trace by Hutchinson (10 probes)."""
PREMISE_BUDGETS: dict[str, dict[str, Any]] = {
    "digits": {"at": (0, 6, 12, 18, 24, 30), "hessian_samples": 200},
    "mnist1d": {"at": (0, 4, 8, 12, 16, 20), "hessian_samples": 256},
    "vit": {"epochs": 20, "at": (0, 4, 8, 12, 16, 20), "hessian_samples": 128},
}
"""Where and on how many examples (the first of the training split) each task is measured; the
ViT runs 20 of its 50 standard epochs (its Hessian-vector products cost ~0.1 s each)."""


def _premise() -> tuple[Experiment, ...]:
    """Issue 15's premise: does curvature anisotropy fall over training? SGDM and LPSGDM (their
    presets), the Hessian spectrum at several epochs (~14 CPU-min for the three tasks)."""
    return tuple(
        Experiment(
            "premise",
            task,
            ("sgdm", "lpsgdm"),
            seeds=PREMISE_SEEDS,
            kind="curvature",
            budget={**PREMISE_SPECTRUM, **budget},
        )
        for task, budget in PREMISE_BUDGETS.items()
    )


ADAPTIVE_P: Variant = {
    "p_schedule": "curvature",
    "p_estimator": "gradient",
    "p_interval": 10,
    "p_smoothing": 0.5,
}
"""LPSGDM's p set by :class:`geoptim.CurvaturePScheduler` from the gradient-statistics proxy
(every 10 steps, ~1-2% of a step), from the preset's p_max down to 2."""
SHUFFLED_P: Variant = {**ADAPTIVE_P, "p_schedule": "shuffled"}
"""The adaptive run's per-step p values of the same seed, replayed in shuffled blocks."""


def _adaptive_p(task: str) -> tuple[Experiment, ...]:
    """Issue 15's comparison: adaptive p and its shuffled control, beside the step-size
    experiments' cosine, fixed p = 2 and fixed p = p_max arms of the same seeds."""
    return (
        Experiment(
            "adaptive-p", task, ("lpsgdm",), seeds=STANDARD_SEEDS, variants=(ADAPTIVE_P, SHUFFLED_P)
        ),
    )


QUICK_SEEDS = 10
STANDARD_SEEDS = 20

SUITES: dict[str, tuple[Experiment, ...]] = {
    "quick": (
        *_step_size("digits", QUICK_SEEDS),
        *_step_size("mnist1d", QUICK_SEEDS),
        *_agr(QUICK_SEEDS),
        Experiment("p-max", "digits", ("lpsgdm",), seeds=QUICK_SEEDS, variants=({"p_max": 14.0},)),
        Experiment("grokking", "grokking", GROKKING, seeds=QUICK_SEEDS),
        Experiment("quadratic", "quadratic", QUADRATIC, seeds=1),
    ),
    "standard": (
        *_step_size("digits", STANDARD_SEEDS),
        *_step_size("mnist1d", STANDARD_SEEDS),
        Experiment("others", "digits", OTHERS, seeds=STANDARD_SEEDS),
        Experiment("others", "mnist1d", OTHERS, seeds=STANDARD_SEEDS),
        *_agr(STANDARD_SEEDS),
        Experiment(
            "p-max",
            "digits",
            ("lpsgdm",),
            seeds=STANDARD_SEEDS,
            variants=tuple({"p_max": p} for p in P_MAX),
        ),
        Experiment("grokking", "grokking", GROKKING, seeds=STANDARD_SEEDS),
        Experiment("grokking-wd", "grokking", GROKKING, seeds=10, lr_wd=GROKKING_LR_WD),
        Experiment(
            "grokking",
            "grokking",
            GROKKING,
            seeds=1,  # ~14 CPU-min per run at the standard budget (3000 steps)
            task_overrides={"model": "transformer"},
        ),
        Experiment("quadratic", "quadratic", QUADRATIC, seeds=3),
        Experiment(
            "quadratic", "quadratic", QUADRATIC, seeds=3, task_overrides={"problem": "weak"}
        ),
        *_premise(),
        *_adaptive_p("digits"),
        *_adaptive_p("mnist1d"),
    ),
    "full": (
        Experiment("grokking", "grokking", (*GROKKING, "lpsgdm", "adamw_agr"), seeds=20),
        Experiment("grokking-wd", "grokking", GROKKING, seeds=10, lr_wd=GROKKING_LR_WD),
        Experiment(
            "grokking", "grokking", GROKKING, seeds=10, task_overrides={"model": "transformer"}
        ),
        *_step_size("digits", STANDARD_SEEDS),
        *_step_size("mnist1d", STANDARD_SEEDS),
        Experiment("others", "digits", OTHERS, seeds=STANDARD_SEEDS),
        Experiment("others", "mnist1d", OTHERS, seeds=STANDARD_SEEDS),
        *_step_size("cifar10", 5),
        Experiment("others", "cifar10", ("adamw", "lion"), seeds=5),
        Experiment("lpsgdm-vs-sgdm", "cifar100", ("sgdm", "lpsgdm", "adamw", "lion"), seeds=5),
        *_agr(STANDARD_SEEDS),
        Experiment("agr", "cifar100", AGR + ADAN, seeds=5),
        Experiment(
            "agr-late",
            "digits",
            ("adamw_agr",),
            seeds=STANDARD_SEEDS,
            variants=(agr_until_fraction(0.75),),
        ),
        Experiment(
            "p-max",
            "digits",
            ("lpsgdm",),
            seeds=STANDARD_SEEDS,
            variants=tuple({"p_max": p} for p in P_MAX),
        ),
        Experiment(
            "p-max",
            "cifar10",
            ("lpsgdm",),
            seeds=5,
            variants=tuple({"p_max": p} for p in (2.0, 4.0, 8.0, 12.0, 14.0)),
        ),
        Experiment("quadratic", "quadratic", QUADRATIC, seeds=3),
        Experiment(
            "quadratic", "quadratic", QUADRATIC, seeds=3, task_overrides={"problem": "weak"}
        ),
        # The LPSGD paper's figure 1: the Hessian spectrum of the digits ResNet over training.
        Experiment(
            "curvature",
            "digits",
            ("sgdm", "lpsgdm"),
            seeds=1,
            kind="curvature",
            task_overrides={"model": "resnet"},
            budget={"epochs": 10, "at": (0, 1, 2, 5, 10)},
        ),
        # The SepNorm paper's figure 2 / appendix C: momentum tracing, Lion vs SepNorm, each
        # with ReLU and leaky ReLU.
        Experiment(
            "momentum-tracing",
            "digits",
            ("lion", "sepnorm"),
            seeds=1,
            kind="momentum_tracing",
            task_overrides={"model": "resnet"},
            variants=({"lr": 1e-2, "weight_decay": 0.2},),
            budget={"epochs": 12},
        ),
    ),
}
"""Every suite by name."""

DEFAULT_OPTIMIZERS = ("sgdm", "lpsgdm", "adamw", "lion")
"""What a task outside the suite (named in ``--tasks``) is run with."""


def suite_names() -> list[str]:
    return list(SUITES)


def select(
    suite: str,
    tasks: Sequence[tuple[str, dict[str, Any]]] | None = None,
    optimizers: Sequence[str] | None = None,
    seeds: int | None = None,
) -> list[Experiment]:
    """The experiments of ``suite`` narrowed by the command line.

    ``tasks`` keeps the experiments on those tasks (a task variant with overrides replaces the
    suite's overrides); a task the suite does not cover gets a comparison of
    :data:`DEFAULT_OPTIMIZERS`. ``optimizers`` becomes the optimizer list of every comparison
    and filters the sweeps. ``seeds`` replaces every experiment's number of seeds.
    """
    chosen = list(SUITES[suite])
    if tasks is not None:
        picked = []
        for name, overrides in tasks:
            matching = [exp for exp in chosen if exp.task == name]
            if not matching:
                matching = [Experiment("compare", name, DEFAULT_OPTIMIZERS, seeds=3)]
            for exp in matching:
                picked.append(replace(exp, task_overrides=overrides or exp.task_overrides))
        chosen = picked
    if optimizers is not None:
        narrowed = []
        for exp in chosen:
            if exp.is_sweep:
                kept = tuple(name for name in exp.optimizers if name in optimizers)
            else:
                kept = tuple(optimizers)
            if kept:
                narrowed.append(replace(exp, optimizers=kept))
        chosen = narrowed
    if seeds is not None:
        chosen = [replace(exp, seeds=seeds) for exp in chosen]
    return chosen


def build_specs(
    experiments: Sequence[Experiment],
    presets: Presets,
    suite: str,
    make_task: Callable[[str, dict[str, Any]], Any],
) -> list[RunSpec]:
    """Expand experiments into run specs, dropping duplicates (the same run id twice).

    ``make_task(name, overrides)`` builds a task object: its ``default_budget(suite)`` is the
    budget, and variant functions may read it.
    """
    specs: dict[str, RunSpec] = {}
    for exp in experiments:
        task = make_task(exp.task, exp.task_overrides)
        budget = {**task.default_budget(suite), **exp.budget}
        for optimizer in exp.optimizers:
            base = presets.hparams(exp.task, exp.task_overrides, optimizer)
            for variant in _variants(exp, task, budget, base):
                for seed in range(exp.seeds):
                    spec = RunSpec(
                        task=exp.task,
                        task_overrides=dict(exp.task_overrides),
                        optimizer=optimizer,
                        hparams={**base, **variant},
                        seed=seed,
                        budget=budget,
                        variant=variant,
                        suite=suite,
                        preset=presets.source(exp.task, exp.task_overrides, optimizer),
                        kind=exp.kind,
                        preset_provenance=presets.provenance(
                            exp.task, exp.task_overrides, optimizer
                        ),
                    )
                    specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def _variants(
    exp: Experiment, task: Any, budget: dict[str, Any], base: dict[str, Any]
) -> list[Variant]:
    if exp.lr_wd:
        # rounded to 12 significant digits: 5e-3 / 0.1 is 0.05, not 0.049999999999999996
        return [{"weight_decay": float(f"{value / float(base['lr']):.12g}")} for value in exp.lr_wd]
    return [
        variant(task, budget) if callable(variant) else dict(variant) for variant in exp.variants
    ]


FALLBACK_SECONDS = {
    "quadratic": 0.3,
    "digits": 3.0,
    "mnist1d": 4.0,
    "grokking": 10.0,
    "grokking[model=transformer]": 850.0,
    "cifar10": 600.0,
    "cifar100": 600.0,
}
"""Single-thread seconds per run where a task gives no ``estimated_seconds`` (rough)."""


def estimated_seconds(spec: RunSpec, task: Any) -> float:
    """The single-thread CPU seconds of one run: ``task.estimated_seconds(budget, optimizer)``
    (which counts ``sgdm_rms`` replaying its LPSGDM run) when the task measures it, else
    :data:`FALLBACK_SECONDS` (twice for ``sgdm_rms``)."""
    estimate = getattr(task, "estimated_seconds", None)
    seconds = estimate(spec.budget, spec.optimizer) if estimate is not None else 0.0
    if seconds:
        return seconds * (2.0 if _replays(spec) else 1.0)
    fallback = FALLBACK_SECONDS.get(spec.task_label, FALLBACK_SECONDS.get(spec.task, 10.0))
    return fallback * (2.0 if spec.optimizer == "sgdm_rms" else 1.0)


def _replays(spec: RunSpec) -> bool:
    """Whether the run first replays a paired run (the shuffled-p control)."""
    return spec.hparams.get("p_schedule") == "shuffled"


def plan_text(
    specs: Sequence[RunSpec], make_task: Callable[[str, dict[str, Any]], Any], workers: int
) -> str:
    """The plan of a dry run: per task, optimizer setting and seeds, the runs and their
    estimated time, then the total and the wall-clock estimate for ``workers`` workers
    (the total shared evenly, at least the longest run)."""
    tasks: dict[str, Any] = {}
    rows: dict[tuple[str, str], list[float]] = {}
    for spec in specs:
        if spec.task_label not in tasks:
            tasks[spec.task_label] = make_task(spec.task, spec.task_overrides)
        rows.setdefault((spec.task_label, spec.label), []).append(
            estimated_seconds(spec, tasks[spec.task_label])
        )
    lines = ["task | setting | seeds | est. s per run"]
    for (task, label), seconds in rows.items():
        lines.append(f"{task} | {label} | {len(seconds)} | {seconds[0]:.1f}")
    total = sum(sum(seconds) for seconds in rows.values())
    longest = max((max(seconds) for seconds in rows.values()), default=0.0)
    wall = max(total / max(workers, 1), longest)
    lines.append(
        f"{len(specs)} runs, {total / 60:.1f} CPU-min single-thread; estimated "
        f"{wall / 60:.1f} min wall with {workers} workers (before any run is skipped)"
    )
    return "\n".join(lines)


def seeds_for_power(claims_json: str | Path) -> dict[tuple[str, str], int | None]:
    """From a report's ``claims.json``: per (claim, task) the paired seeds per arm that give
    80% power for the paper's effect at the spread measured (the pilot power analysis)."""
    rows = json.loads(Path(claims_json).read_text(encoding="utf-8"))
    return {(row["claim"], row["task"]): row["n_for_paper"] for row in rows}
