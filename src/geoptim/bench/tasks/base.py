"""The ``Task`` interface every benchmark task implements.

A task is a dataclass whose fields are its options (``get_task(name, **overrides)`` sets them).
Each option is declared once, as a field: its annotation is its type and :func:`option` adds its
range or choices, e.g. ``width: int = option(16, ge=1)``; :func:`check_options` (called by
``get_task``, so by every command before any work) checks values against the declarations.
``run(optimizer, hparams, seed, budget, progress, callbacks)`` trains once and returns a JSON-able
dict::

    {"curves": {"step": [...], "epoch": [...], "train_loss": [...], ..., "time_s": [...]},
     "final": {metric: value}, "steps": int, "extra": {"diverged": bool, ...}}

``hparams`` holds ``lr``, ``weight_decay`` (default 0), ``warmup_frac`` (default 0),
``lr_schedule`` (``"cosine"`` or ``"constant"``), ``p_max`` (LPSGD/LPSGDM only) and optimizer
keywords; ``budget`` is ``{"epochs": E}`` or ``{"steps": S, "eval_every": k}`` (see
:mod:`geoptim.bench.training`).

:class:`TrainableTask` adds ``make_model(seed)``, ``make_data(seed)`` (a :class:`TaskData`) and
``loss_fn``, and runs the shared loop :func:`geoptim.bench.training.train`.

Provenance and cost: ``data_hash()`` is a hash of the task's generated data and splits (every
record carries it as ``extra["data_hash"]``); ``estimated_seconds(budget)`` is the single-thread
CPU time a run of ``budget`` takes, from the per-step and per-checkpoint costs
(``STEP_SECONDS``, ``EVAL_SECONDS``) measured for the task's default options.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.nn import functional as F

SUITES = ("quick", "standard", "full")


class TaskData(Protocol):
    """Data of a trainable task; :class:`geoptim.bench.data.TensorData` implements it."""

    steps_per_epoch: int

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def hessian_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def data_hash(self) -> str: ...


@dataclasses.dataclass
class Task:
    """Base of all tasks; subclasses set ``name``, ``description`` and their option fields."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    STEP_SECONDS: ClassVar[float] = 0.0
    """Measured seconds per optimizer step (single thread, default options, CPU). The values
    were taken on the shared 2-core development machine: steps at load ~1, evaluations at load
    ~15 and divided by the slow-down the step time showed then (5.6x); treat them as +-50%."""
    EVAL_SECONDS: ClassVar[float] = 0.0
    """Measured seconds per checkpoint evaluation (same conditions)."""
    TUNING_METRIC: ClassVar[str] = "val_acc"
    """What ``geoptim tune`` maximises (a validation metric; see :mod:`geoptim.bench.tune`)."""

    def default_budget(self, suite: str) -> dict[str, Any]:
        """The budget for ``suite`` (``"quick"``, ``"standard"`` or ``"full"``); a task without a
        ``"standard"`` budget runs its quick one there."""
        check_suite(suite)
        budgets = self._budgets()
        return dict(budgets.get(suite) or budgets["quick"])

    def _budgets(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def data_hash(self) -> str:
        """A hash of the data the task trains and evaluates on (all splits)."""
        raise NotImplementedError

    def budget_steps(self, budget: dict[str, Any]) -> tuple[int, int]:
        """``(optimizer steps, checkpoints after step 0)`` of ``budget``."""
        steps = int(budget["steps"])
        return steps, steps

    def estimated_seconds(self, budget: dict[str, Any], optimizer: str | None = None) -> float:
        """The estimated single-thread CPU time of one run of ``budget`` (twice that for
        ``"sgdm_rms"``, which replays its paired LPSGDM run first)."""
        steps, checkpoints = self.budget_steps(budget)
        runs = 2 if optimizer == "sgdm_rms" else 1
        step_s, eval_s = self.costs()
        return runs * (steps * step_s + (checkpoints + 1) * eval_s)

    def costs(self) -> tuple[float, float]:
        """Measured single-thread seconds per optimizer step and per checkpoint for these
        options (the class constants; a task whose options change the cost overrides this)."""
        return self.STEP_SECONDS, self.EVAL_SECONDS

    def run(
        self,
        optimizer: str,
        hparams: dict[str, Any],
        seed: int,
        budget: dict[str, Any],
        progress: Callable[[float], None] | None = None,
        callbacks: Sequence[Any] = (),
    ) -> dict[str, Any]:
        raise NotImplementedError


@dataclasses.dataclass
class TrainableTask(Task):
    """A classification task trained by the shared loop. ``device``: ``"cpu"``, ``"cuda"``, or
    ``"auto"`` (CUDA when available)."""

    device: str = "cpu"

    def make_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; ``torch.manual_seed(seed)`` makes it reproducible."""
        torch.manual_seed(seed)
        return self._build_model()

    def _build_model(self) -> nn.Module:
        raise NotImplementedError

    def make_data(self, seed: int) -> TaskData:
        """The task's data; the splits are fixed, ``seed`` only sets the order of the batches."""
        raise NotImplementedError

    def data_hash(self) -> str:
        """The hash of ``make_data(0)`` (computed once per task object; a run stores it too)."""
        if "_data_hash" not in self.__dict__:
            self.__dict__["_data_hash"] = self.make_data(0).data_hash()
        return self.__dict__["_data_hash"]

    def budget_steps(self, budget: dict[str, Any]) -> tuple[int, int]:
        from geoptim.bench.training import budget_steps

        steps_per_epoch = self.make_data(0).steps_per_epoch
        if budget.get("batches_per_epoch"):
            steps_per_epoch = min(steps_per_epoch, int(budget["batches_per_epoch"]))
        steps, eval_every = budget_steps(budget, steps_per_epoch)
        return steps, -(-steps // eval_every)

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (negative log-likelihood of the softmax)."""
        return F.cross_entropy(outputs, targets)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def extra(self, result: dict[str, Any]) -> dict[str, Any]:
        """Task-specific entries for ``result["extra"]``, computed from the finished result."""
        return {}

    def run(
        self,
        optimizer: str,
        hparams: dict[str, Any],
        seed: int,
        budget: dict[str, Any],
        progress: Callable[[float], None] | None = None,
        callbacks: Sequence[Any] = (),
        checkpoint: Any = None,
    ) -> dict[str, Any]:
        """Train with :func:`geoptim.bench.training.train` (``checkpoint``: a mid-run
        :class:`geoptim.bench.checkpoints.Checkpoint` to resume from and save to)."""
        from geoptim.bench.training import train

        result = train(self, optimizer, hparams, seed, budget, progress, callbacks, checkpoint)
        result["extra"].update(self.extra(result))
        return result


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values an option accepts beyond its type: ``ge <= x``, ``gt < x``, ``x <= le``,
    ``x < lt``, ``x in choices`` (``None``: no limit)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: Sequence[Any] | None = None

    def violation(self, value: Any) -> str | None:
        """The range ``value`` breaks (``"must be >= 1"``), or ``None``; see :func:`check_choice`
        for the choices."""
        limits = (
            (">=", self.ge, operator.ge),
            (">", self.gt, operator.gt),
            ("<=", self.le, operator.le),
            ("<", self.lt, operator.lt),
        )
        broken = [
            f"{sign} {limit}"
            for sign, limit, holds in limits
            if limit is not None and value is not None and not holds(value, limit)
        ]
        return f"must be {' and '.join(broken)}" if broken else None


def option(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """Declare a task option with a default and the range (or choices) it accepts; its type is
    the field's annotation. A plain field (``name: str = "x"``) is an option checked by type
    only."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(ge, gt, le, lt, choices)})


def check_options(cls: type[Task], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` as valid values of ``cls``'s options, or ``ValueError`` naming the bad one.

    Each value must have its option's type -- ``int`` (not ``bool``), ``float`` (finite; an
    ``int`` is converted), ``str``, ``bool``, ``tuple[...]``, or ``X | None`` (other annotations
    are not checked) -- and lie in its :class:`Bounds`. Text (a command line's ``width=16``) is
    read by the option's type first: ``"none"`` / ``"null"`` give ``None`` where allowed, a
    tuple is read as a JSON list.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"task {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in overrides.items():
        bounds = fields[key].metadata.get("bounds", Bounds())
        try:
            checked[key] = _typed(value, hints[key])
            problem = bounds.violation(checked[key])
        except (TypeError, ValueError) as err:
            problem = str(err)
        if problem is not None:
            raise ValueError(f"task {cls.name!r} option {key} {problem}, got {value!r}")
        if bounds.choices is not None:
            try:
                check_choice(key, checked[key], bounds.choices)
            except ValueError as err:
                raise ValueError(f"task {cls.name!r}: {err}") from None
    return checked


def _typed(value: Any, kind: Any) -> Any:
    """``value`` as an instance of the annotation ``kind`` (see :func:`check_options`)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _typed(value, inner[0]) if len(inner) == 1 else value
    if kind is str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if kind is int:
        if isinstance(value, str):
            value = _parse(int, value, "must be an integer")
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError("must be an integer")
        return value
    if kind is float:
        if isinstance(value, str):
            value = _parse(float, value, "must be a number")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError("must be a number")
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return float(value)
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            value = _parse(json.loads, value, "must be a JSON list")
        if not isinstance(value, (list, tuple)):
            raise TypeError("must be a list")
        if args[-1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise ValueError(f"must have {len(args)} items")
        return tuple(_typed(item, arg) for item, arg in zip(value, args, strict=True))
    return value  # an annotation not listed in check_options: not checked


def _parse(parse: Callable[[str], Any], text: str, problem: str) -> Any:
    try:
        return parse(text)
    except ValueError:
        raise ValueError(problem) from None


def check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        known = ", ".join(map(str, choices))
        raise ValueError(f"unknown {option} {value!r}; known: {known}")
