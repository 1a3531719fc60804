"""The benchmark suites: which (task, optimizer, hyper-parameters, seed) runs make each one.

A suite is a list of :class:`Experiment`. An experiment is either a *comparison* (several
optimizers with their presets on one task, the papers' tables) or a *sweep* (one optimizer with
some hyper-parameters set on purpose: ``p_max`` values, AGR switched off late). Every claim in
:mod:`geoptim.bench.claims` reads the runs of one or two experiments.

``quick`` tests every claim at CPU scale with 3 seeds and is sized to finish in under 10 minutes
on 2 cores; ``full`` is the papers' protocol (CIFAR, more seeds, longer budgets).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
    ``"train"``, or an analysis experiment.
    """

    name: str
    task: str
    optimizers: tuple[str, ...]
    seeds: int
    task_overrides: dict[str, Any] = field(default_factory=dict)
    variants: tuple[Variant | VariantFn, ...] = ({},)
    budget: dict[str, Any] = field(default_factory=dict)
    kind: str = "train"

    @property
    def is_sweep(self) -> bool:
        return any(callable(variant) or variant for variant in self.variants)


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


HEADLINE = ("sgdm", "lpsgdm", "adamw", "lion", "sepnorm")
GROKKING = ("adamw", "lion", "sepnorm", "ortsepnorm")
AGR = ("adamw", "adamw_agr", "adan", "adan_agr")
QUADRATIC = ("sgd", "signsgd", "normsgd", "lpsgd")
P_MAX = (4, 6, 9, 14)

SUITES: dict[str, tuple[Experiment, ...]] = {
    "quick": (
        Experiment("grokking-gap", "grokking", GROKKING, seeds=3),
        Experiment("lpsgdm-vs-sgdm", "digits", HEADLINE, seeds=3),
        Experiment("lpsgdm-vs-sgdm", "mnist1d", HEADLINE, seeds=3),
        Experiment("agr", "digits", AGR, seeds=3),
        Experiment("agr-late", "digits", ("adamw_agr",), seeds=3,
                   variants=(agr_until_fraction(0.5),)),
        Experiment("p-max", "digits", ("lpsgdm",), seeds=3,
                   variants=tuple({"p_max": p} for p in P_MAX)),
        Experiment("quadratic", "quadratic", QUADRATIC, seeds=1),
    ),
    "full": (
        Experiment("grokking-gap", "grokking", (*GROKKING, "lpsgdm", "adamw_agr"), seeds=5),
        Experiment("grokking-gap", "grokking", GROKKING, seeds=3,
                   task_overrides={"model": "transformer"}),
        Experiment("lpsgdm-vs-sgdm", "digits", HEADLINE, seeds=5),
        Experiment("lpsgdm-vs-sgdm", "mnist1d", HEADLINE, seeds=5),
        Experiment("lpsgdm-vs-sgdm", "cifar10", ("sgdm", "lpsgdm", "adamw", "lion"), seeds=3),
        Experiment("lpsgdm-vs-sgdm", "cifar100", ("sgdm", "lpsgdm", "adamw", "lion"), seeds=3),
        Experiment("agr", "digits", AGR, seeds=5),
        Experiment("agr", "cifar100", AGR, seeds=3),
        Experiment("agr-late", "digits", ("adamw_agr",), seeds=5,
                   variants=(agr_until_fraction(0.5), agr_until_fraction(0.75))),
        Experiment("p-max", "digits", ("lpsgdm",), seeds=5,
                   variants=tuple({"p_max": p} for p in P_MAX)),
        Experiment("p-max", "cifar10", ("lpsgdm",), seeds=3,
                   variants=tuple({"p_max": p} for p in (2, 4, 6, 8, 12))),
        Experiment("quadratic", "quadratic", QUADRATIC, seeds=3),
        Experiment("quadratic", "quadratic", QUADRATIC, seeds=3,
                   task_overrides={"problem": "weak"}),
        # The LPSGD paper's figure 1: the Hessian spectrum of the digits ResNet over training.
        Experiment("curvature", "digits", ("sgdm", "lpsgdm"), seeds=1, kind="curvature",
                   task_overrides={"model": "resnet"},
                   budget={"epochs": 10, "at": (0, 1, 2, 5, 10)}),
        # The SepNorm paper's figure 2 / appendix C: momentum tracing, Lion vs SepNorm, each
        # with ReLU and leaky ReLU.
        Experiment("momentum-tracing", "digits", ("lion", "sepnorm"), seeds=1,
                   kind="momentum_tracing", task_overrides={"model": "resnet"},
                   variants=({"lr": 1e-2, "weight_decay": 0.2},), budget={"epochs": 12}),
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
        for variant_or_fn in exp.variants:
            if callable(variant_or_fn):
                variant = variant_or_fn(task, budget)
            else:
                variant = dict(variant_or_fn)
            for optimizer in exp.optimizers:
                base = presets.hparams(exp.task, exp.task_overrides, optimizer)
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
                    )
                    specs.setdefault(spec.run_id, spec)
    return list(specs.values())
