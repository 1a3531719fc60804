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
  same ``lr * wd`` values for every optimizer), and the
  analogs of the papers' other experiments (:func:`_new_tasks`, ~19 CPU-min by the tasks'
  estimates, 10 paired seeds per arm): AdamW, AdamW-AGR, Lion and SepNorm on the character
  language model (ALBERT / T5) with AdamW's weight-decay sweep at 5 seeds, and on the tiny ViT
  (SepNorm's ViT table, AGR's TinyViT); Adan with and without AGR and AGR stopped at 60% of the
  steps on the DDPM (2-D moons); AdamW vs SepNorm at MNIST-1D batch 400 and 800 with the lr
  scaled linearly (SepNorm's table 2); LPSGD vs plain SGD on digits (LPSGD's fig. 2). The
  quadratic's records also feed SepNorm's lower-bound checks. ``quick`` has none of these:
  its 10-minute budget has no room left. And issue 15:
  the premise of the cosine p schedule (the Hessian's anisotropy over training for SGDM and
  LPSGDM, 3 seeds, on digits, MNIST-1D and the ViT; :func:`_premise`) and the adaptive-p
  comparison (LPSGDM with :class:`geoptim.CurvaturePScheduler` and its shuffled control, 20
  seeds on digits and MNIST-1D, beside the cosine and fixed-p arms; :func:`_adaptive_p`).
* ``full``: the CPU experiments at larger scale (the transformer with 10 seeds, curvature and
  momentum tracing) and, on a GPU, one block per paper table (``Experiment.table``): the LPSGD
  paper's tables 1-3 (CIFAR-10/100 x VGG-11 / ResNet-18 / ResNet-50, ImageNet ResNet-50), its
  fig. 2 (LPSGD vs SGD) and fig. 4 (p_max), the AGR paper's CIFAR-100 and Tiny-ImageNet runs
  (ResNet-18/50/101, VGG-11) and the SepNorm paper's table 2 (ResNet-50 at batch 64/256/512),
  at the papers' epochs, seeds and presets (:data:`geoptim.bench.presets.PAPER_TABLES`);
  ``--dry-run`` prints its runs and device-hours per paper table (:func:`table_plan_text`).
* ``smoke``: every (task, options, run kind) and every optimizer of the suites above, for three
  steps on the CPU, on stand-in data where the real data is a folder (:func:`smoke_experiments`):
  a check that a long run will not die on a typo.

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

The new tasks had no pilot: 10 paired seeds is the floor of ``quick`` (an MDE of about one sd
of the differences) at the budgets that fit (charlm 200 steps, the ViT 15 epochs, the DDPM 1500
steps); their first records' ``n for paper`` is the power analysis for the next suite. The
charlm weight-decay sweep's 5 seeds make its rows descriptive.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
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
    at the same decoupled shrink per step. ``table``: the paper table (or figure) the experiment
    reproduces (``"LPSGD table 1"``), which groups the full suite's dry-run plan; ``""`` (the
    default) becomes the experiment name.
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
    table: str = ""
    lr_scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.table:
            object.__setattr__(self, "table", self.name)

    @property
    def is_sweep(self) -> bool:
        return bool(self.lr_wd or self.lr_scale) or any(
            callable(variant) or variant for variant in self.variants
        )


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


SEPNORM_VS = ("adamw", "adamw_agr", "lion", "sepnorm")
"""The transformer tasks' arms: the SepNorm paper's ViT and T5 tables (AdamW, Lion, SepNorm)
and the AGR paper's TinyViT and ALBERT runs (AdamW with and without AGR)."""
CHARLM_WD = (0.0, 1.0)
"""The AGR paper's ALBERT weight-decay sweep (its table 6: 0 to 1e-2 beside the default) as
AdamW weight decays beside the preset's 0.1: none and ten times the preset."""
BATCH_SCALES = (4, 8)
"""The SepNorm paper's table 2 (batch 64 / 256 / 512) as multiples of MNIST-1D's batch of 100,
the lr scaled by the same factor; the factor 1 is the ``others`` comparison."""
NEW_TASK_SEEDS = 10


def _new_tasks(seeds: int) -> tuple[Experiment, ...]:
    """The analogs of the papers' language, vision-transformer, diffusion and batch-size
    experiments, and LPSGD vs plain SGD (the LPSGD paper's fig. 2), at CPU budgets (each
    run ~2-9 s single-thread)."""
    charlm_budget = {"steps": 200, "eval_every": 100}
    return (
        Experiment("transformers", "charlm", SEPNORM_VS, seeds=seeds, budget=charlm_budget),
        Experiment(
            "agr-wd",
            "charlm",
            AGR,
            seeds=5,
            budget=charlm_budget,
            variants=tuple({"weight_decay": wd} for wd in CHARLM_WD),
        ),
        Experiment("transformers", "vit", SEPNORM_VS, seeds=seeds, budget={"epochs": 15}),
        Experiment(
            "agr",
            "ddpm",
            ADAN,
            seeds=seeds,
            budget=DDPM_BUDGET,
        ),
        Experiment(
            "agr-late",
            "ddpm",
            ("adan_agr",),
            seeds=seeds,
            budget=DDPM_BUDGET,
            variants=(agr_until_fraction(0.6),),  # the AGR paper: epoch 1200 of 2000
        ),
        *(
            Experiment(
                "batch-size",
                "mnist1d",
                ("adamw", "sepnorm"),
                seeds=seeds,
                task_overrides={"batch_size": 100 * factor},
                lr_scale=(float(factor),),
            )
            for factor in BATCH_SCALES
        ),
        Experiment("lpsgd-vs-sgd", "digits", ("lpsgd", "sgd"), seeds=seeds),
    )


DDPM_BUDGET = {"steps": 1500, "eval_every": 750}


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

LPSGD_TABLE = ("sgdm", "adamw", "lion", "lpsgdm")
"""The optimizers of the LPSGD paper's tables 1-3."""
CIFAR_SEEDS = 5
"""The LPSGD paper reports mean +- sd without saying over how many runs: 5 paired seeds."""
IMAGENET_SEEDS = 3
AGR_SEEDS = 4
"""The AGR paper runs every experiment four times (section 5.1)."""
SEPNORM_SEEDS = 5
"""The SepNorm paper's ImageNet runs are averaged over five (its sd is given at batch 256 only)."""
RESNET18 = {"model": "resnet18"}
SEPNORM_BATCHES = (64, 256, 512)


def _paper_tables() -> tuple[Experiment, ...]:
    """The GPU experiments of the full suite, one block per paper table, at the papers' epochs
    (the tasks' ``full`` budgets: CIFAR 200, ImageNet 60, Tiny-ImageNet 200; SepNorm's
    ImageNet 100) and presets (:data:`geoptim.bench.presets.PAPER_TABLES`)."""
    lpsgd = [
        Experiment(
            "lpsgd-table",
            task,
            LPSGD_TABLE,
            seeds=CIFAR_SEEDS,
            task_overrides={"model": model},
            table=table,
        )
        for task, table in (("cifar10", "LPSGD table 1"), ("cifar100", "LPSGD table 2"))
        for model in ("vgg11", "resnet18", "resnet50")
    ]
    step_size = [
        replace(exp, seeds=CIFAR_SEEDS, task_overrides=RESNET18, table="LPSGD table 1 controls")
        for exp in _step_size("cifar10", CIFAR_SEEDS)
    ]
    imagenet = Experiment(
        "lpsgd-table",
        "imagenet",
        LPSGD_TABLE,
        seeds=IMAGENET_SEEDS,
        task_overrides={"model": "resnet50"},
        table="LPSGD table 3",
    )
    plain_sgd = [
        Experiment(
            "lpsgd-vs-sgd",
            task,
            ("sgd", "lpsgd"),
            seeds=CIFAR_SEEDS,
            task_overrides={"model": model},
            table="LPSGD fig. 2",
        )
        for task, model in (("cifar10", "resnet18"), ("cifar100", "resnet50"))
    ]
    agr = [
        Experiment("agr", task, AGR, seeds=AGR_SEEDS, task_overrides={"model": model}, table=table)
        for task, table in (
            ("cifar100", "AGR CIFAR-100 (sec. 5.3.1)"),
            ("tinyimagenet", "AGR table 5"),
        )
        for model in ("resnet18", "resnet50", "resnet101", "vgg11")
    ]
    sepnorm = [
        Experiment(
            "sepnorm-batch",
            "imagenet",
            ("adamw", "sepnorm"),
            seeds=SEPNORM_SEEDS if batch == 256 else 1,
            task_overrides={"model": "resnet50", "batch_size": batch, "amp": "bf16"},
            budget={"epochs": 100},
            table="SepNorm table 2",
        )
        for batch in SEPNORM_BATCHES
    ]
    return (*lpsgd, *step_size, imagenet, *plain_sgd, *agr, *sepnorm)


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
        Experiment("quadratic", "quadratic", QUADRATIC, seeds=3),
        Experiment(
            "quadratic", "quadratic", QUADRATIC, seeds=3, task_overrides={"problem": "weak"}
        ),
        *_new_tasks(NEW_TASK_SEEDS),
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
        *_paper_tables(),
        *_agr(STANDARD_SEEDS),
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
            seeds=CIFAR_SEEDS,
            task_overrides=RESNET18,
            variants=tuple({"p_max": p} for p in (2.0, 4.0, 8.0, 12.0, 14.0)),
            table="LPSGD fig. 4",
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
"""Every suite by name (with ``smoke``, derived from the others below)."""

SMOKE, FULL = "smoke", "full"
SMOKE_BUDGETS: dict[str, dict[str, Any]] = {
    "train": {"steps": 3, "eval_every": 3, "batches_per_epoch": 3},
    "curvature": {
        "epochs": 1,
        "at": (0, 1),
        "k": 1,
        "hessian_samples": 16,
        "slq_probes": 1,
        "slq_steps": 4,
        "trace_samples": 10,
    },
    "momentum_tracing": {"epochs": 1},
}
"""The smoke suite's budget per run kind (it replaces the task's budget; a kind not listed gets
the ``"train"`` one): a few steps, one evaluation after them."""
SMOKE_BATCH_SIZE = 4
"""The batch size of smoke runs on stand-in data (a ResNet-101 step on 4 images is CPU-cheap)."""


def smoke_experiments(suites: dict[str, tuple[Experiment, ...]]) -> tuple[Experiment, ...]:
    """The smoke suite: one run (seed 0, the preset, no variant, :data:`SMOKE_BUDGETS`) of every
    distinct (task, task overrides, run kind) of every suite in ``suites``, with the first
    optimizer it is run with, and one of every optimizer not covered so, on the first task it is
    run on; so a typo in any suite's tasks, models, data options, run kinds or optimizers fails in
    minutes on a laptop. :func:`for_smoke_run` then puts the runs on the CPU and on stand-in data.
    (Every (task, optimizer) preset is looked up, and checked, by the suites' own plans.)"""
    chosen: list[Experiment] = []
    seen_tasks: set[str] = set()
    seen_optimizers: set[str] = set()
    for experiments in suites.values():
        for exp in experiments:
            task_key = json.dumps([exp.task, exp.task_overrides, exp.kind], sort_keys=True)
            for optimizer in exp.optimizers:
                if task_key in seen_tasks and optimizer in seen_optimizers:
                    continue
                seen_tasks.add(task_key)
                seen_optimizers.add(optimizer)
                chosen.append(
                    Experiment(
                        SMOKE,
                        exp.task,
                        (optimizer,),
                        seeds=1,
                        task_overrides=dict(exp.task_overrides),
                        budget=SMOKE_BUDGETS.get(exp.kind, SMOKE_BUDGETS["train"]),
                        kind=exp.kind,
                        table=exp.table,
                    )
                )
    return tuple(chosen)


SUITES[SMOKE] = smoke_experiments(SUITES)


def for_smoke_run(experiments: Sequence[Experiment], root: Path) -> list[Experiment]:
    """``experiments`` on the CPU (``device="cpu"`` for a task with a ``device`` option) and,
    for a task with ``write_stand_in(root)`` (its real data is a folder: CIFAR pickles, an
    ImageNet tree), on small generated data written under ``root/<task>`` (once per task; the
    overrides it returns are laid over the experiment's) in batches of :data:`SMOKE_BATCH_SIZE`
    (unless the experiment sets the batch size or the task's preset depends on it)."""
    from geoptim.bench.tasks import TASKS, get_task

    written: dict[str, dict[str, Any]] = {}
    chosen = []
    for exp in experiments:
        overrides = dict(exp.task_overrides)
        cls = TASKS.get(exp.task)
        options = {option.name for option in fields(cls)} if cls is not None else set()
        if "device" in options:
            overrides["device"] = "cpu"
        if cls is not None and hasattr(cls, "write_stand_in"):
            if exp.task not in written:
                task = get_task(exp.task, **overrides)
                written[exp.task] = task.write_stand_in(root / exp.task)
            overrides.update(written[exp.task])
            # a batch size the experiment chose, or one its preset depends on, is kept
            fixed = {*exp.task_overrides, *getattr(cls, "PRESET_OPTIONS", ())}
            if "batch_size" in options and "batch_size" not in fixed:
                overrides["batch_size"] = SMOKE_BATCH_SIZE
        chosen.append(replace(exp, task_overrides=overrides))
    return chosen


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
        budget = (
            dict(exp.budget) if suite == SMOKE else {**task.default_budget(suite), **exp.budget}
        )
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
    if exp.lr_scale:
        return [{"lr": float(f"{factor * float(base['lr']):.12g}")} for factor in exp.lr_scale]
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


THROUGHPUT_FILE = "throughput.json"
"""Where the full suite's dry run caches the throughput it measured, in the output directory."""
TIMED_STEPS = 2
"""Steps timed per task by :func:`measure_throughput`, after as many warm-up steps."""


def measure_throughput(task: Any) -> dict[str, Any]:
    """Seconds per optimizer step and per evaluation of a trainable ``task`` on the device it
    would train on, measured with the shared loop: ``2 * TIMED_STEPS`` SGD-momentum steps,
    evaluated after ``TIMED_STEPS`` (the first ``TIMED_STEPS`` warm up: allocation, kernel
    selection). A step is the training time of the second half over ``TIMED_STEPS``; an evaluation
    is the wall time from the end of the warm-up's last step to the end of the next step, less a
    step. Where the real data is absent a task with ``write_stand_in`` is timed on stand-in data
    (``"data": "stand-in (<the options it changes>)"``: smaller splits, so a cheaper evaluation,
    and maybe smaller images or batches no larger than its training set: a rough figure)."""
    import tempfile
    import time

    from geoptim.bench.tasks import get_task
    from geoptim.bench.training import train

    class StepEnds:
        def __init__(self) -> None:
            self.at: list[float] = []

        def on_step(self, step: int, *_: Any) -> None:
            self.at.append(time.perf_counter())

    budget = {"steps": 2 * TIMED_STEPS, "eval_every": TIMED_STEPS}
    with tempfile.TemporaryDirectory() as folder:
        data = "real"
        try:
            task.make_data(0)
        except (FileNotFoundError, ValueError):
            if not hasattr(task, "write_stand_in"):
                raise
            stand_in, real = task.write_stand_in(Path(folder)), task_options(task)
            task = get_task(task.name, **{**real, **stand_in})
            changed = [f"{k}={v}" for k, v in stand_in.items() if k != "data_dir" and real[k] != v]
            data = f"stand-in ({', '.join(changed)})" if changed else "stand-in"
        ends = StepEnds()
        result = train(task, "sgdm", {"lr": 1e-3}, 0, budget, callbacks=[ends])
    times = result["curves"]["time_s"]
    step_s = (times[2] - times[1]) / TIMED_STEPS
    eval_s = max(ends.at[TIMED_STEPS] - ends.at[TIMED_STEPS - 1] - step_s, 0.0)
    return {"step_s": step_s, "eval_s": eval_s, "device": device_name(task), "data": data}


def task_options(task: Any) -> dict[str, Any]:
    """The option values of a task object (its init fields)."""
    return {option.name: getattr(task, option.name) for option in fields(task) if option.init}


def device_name(task: Any) -> str:
    """``cpu`` or ``cuda (<GPU name>)``: where ``task`` trains."""
    import torch

    device = task.torch_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def run_cost(spec: RunSpec, task: Any, throughput: dict[str, Any] | None) -> float | None:
    """The seconds one run takes on its device from ``throughput`` (``None``: the task's CPU
    estimate, :func:`estimated_seconds`); ``None`` when its number of steps is unknown (an
    epoch budget on stand-in data for a task without ``nominal_steps_per_epoch``)."""
    if throughput is None:
        return estimated_seconds(spec, task)
    from geoptim.bench.training import budget_steps

    if throughput["data"] == "real":
        steps, checkpoints = task.budget_steps(spec.budget)
    elif "steps" in spec.budget:
        steps, every = budget_steps(spec.budget, 1)
        checkpoints = -(-steps // every)
    elif hasattr(task, "nominal_steps_per_epoch"):
        per_epoch = task.nominal_steps_per_epoch()
        if spec.budget.get("batches_per_epoch"):
            per_epoch = min(per_epoch, int(spec.budget["batches_per_epoch"]))
        steps, every = budget_steps(spec.budget, per_epoch)
        checkpoints = -(-steps // every)
    else:
        return None
    runs = 2 if spec.optimizer == "sgdm_rms" else 1
    return runs * (steps * throughput["step_s"] + (checkpoints + 1) * throughput["eval_s"])


def tables_of(
    experiments: Sequence[Experiment],
    presets: Presets,
    suite: str,
    make_task: Callable[[str, dict[str, Any]], Any],
) -> dict[str, str]:
    """Run id -> the paper table (:attr:`Experiment.table`) of the first experiment making it."""
    tables: dict[str, str] = {}
    for exp in experiments:
        for spec in build_specs([exp], presets, suite, make_task):
            tables.setdefault(spec.run_id, exp.table)
    return tables


def table_plan_text(
    specs: Sequence[RunSpec],
    tables: dict[str, str],
    make_task: Callable[[str, dict[str, Any]], Any],
    out_dir: str | Path,
    measure: Callable[[Any], dict[str, Any]] = measure_throughput,
) -> str:
    """The full suite's dry-run plan: per paper table (``tables``: run id -> table) the runs and
    the device-hours they take, from the throughput of every trainable (task, options) measured
    on its device (:func:`measure_throughput`; cached in ``out_dir/throughput.json``, so a second
    dry run measures nothing); other runs (not trainable, analysis kinds) at their CPU estimate."""
    from geoptim.bench.records import canonical_json, write_json_atomic
    from geoptim.bench.tasks import TrainableTask

    cache_path = Path(out_dir) / THROUGHPUT_FILE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    tasks: dict[str, Any] = {}
    measured: dict[str, dict[str, Any] | None] = {}
    for spec in specs:
        label = spec.task_label
        if label in tasks:
            continue
        task = tasks[label] = make_task(spec.task, spec.task_overrides)
        measured[label] = None
        if isinstance(task, TrainableTask):
            key = f"{label} on {device_name(task)}"
            if key not in cache:
                cache[key] = measure(task)
                write_json_atomic(cache_path, cache)
            measured[label] = cache[key]
    costs: dict[str, list[float | None]] = {}
    devices: dict[str, set[str]] = {}
    cost_of: dict[str, float | None] = {}  # runs differing only in hparams and seed cost the same
    for spec in specs:
        table, throughput = tables.get(spec.run_id, "other"), measured[spec.task_label]
        throughput = throughput if spec.kind == "train" else None
        key = canonical_json([spec.task_label, spec.kind, spec.optimizer, spec.budget])
        if key not in cost_of:
            cost_of[key] = run_cost(spec, tasks[spec.task_label], throughput)
        costs.setdefault(table, []).append(cost_of[key])
        device = "cpu (estimated)" if throughput is None else throughput["device"]
        devices.setdefault(table, set()).add(device)
    lines = ["paper table | runs | device | device-hours"]
    total = 0.0
    for table, seconds in costs.items():
        known = [cost for cost in seconds if cost is not None]
        total += sum(known)
        unknown = len(seconds) - len(known)
        hours = f"{sum(known) / 3600:.1f}" + (
            f" + {unknown} runs of unknown length" * bool(unknown)
        )
        lines.append(f"{table} | {len(seconds)} | {', '.join(sorted(devices[table]))} | {hours}")
    lines += [
        f"{len(specs)} runs, {total / 3600:.1f} device-hours in all, one run at a time per "
        "device (before any run is skipped)",
        "",
        "task | device | data | s per step | s per evaluation",
    ]
    for label, throughput in measured.items():
        if throughput is not None:
            lines.append(
                f"{label} | {throughput['device']} | {throughput['data']} | "
                f"{throughput['step_s']:.4f} | {throughput['eval_s']:.3f}"
            )
    lines.append(f"(throughput measured once, cached in {cache_path})")
    if any(t is not None and t["data"] != "real" for t in measured.values()):
        lines.append(
            "stand-in: timed on the task's small generated data with the options shown (smaller "
            "splits, maybe smaller images, batches no larger than its training set): a rough "
            "figure; put the data in place and delete the cache to time the real runs"
        )
    return "\n".join(lines)


def seeds_for_power(claims_json: str | Path) -> dict[tuple[str, str], int | None]:
    """From a report's ``claims.json``: per (claim, task) the paired seeds per arm that give
    80% power for the paper's effect at the spread measured (the pilot power analysis)."""
    rows = json.loads(Path(claims_json).read_text(encoding="utf-8"))
    return {(row["claim"], row["task"]): row["n_for_paper"] for row in rows}
