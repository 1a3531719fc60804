"""What every geoptim optimizer shares: argument checks, the step skeleton, precision handling.

A concrete optimizer subclasses :class:`GeoOptimizer` and implements two methods:

* ``_init_state(param, state, group)`` — called once per parameter, under ``if not state:``;
* ``_update(group, params, grads, states)`` — one param group's update, given the parameters that
  have a gradient, their gradients (already negated when ``maximize``) and their state dicts.

``_update`` dispatches to a pure functional kernel, chosen by the group's ``foreach`` and
``fused`` flags (:func:`geoptim._compiled.kernel_mode`): the single-tensor reference
(``foreach=False``), the multi-tensor ``torch._foreach_*`` path, or the fused one-pass CPU kernels
(the default where they apply).

Sharded (DTensor) parameters reach ``_update`` as their local shards, with their layouts declared
to :mod:`geoptim._stats` for the update's duration, so kernels need not know about sharding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from geoptim._stats import (
    dtensor_type,
    layouts_of,
    local,
    parameter_labels,
    sharded,
    tracing_whole_tensors,
)

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]

LOW_PRECISION = (torch.float16, torch.bfloat16)

#: The implementation flags every param group holds, with their defaults.
IMPLEMENTATION_DEFAULTS = {
    "maximize": False,
    "foreach": None,
    "fused": None,
    "differentiable": False,
}


# ---------------------------------------------------------------- argument checks (constructor)


def eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` opaque to ``torch.compile`` (the graph breaks around it and it runs eagerly: the C
    kernels and the sharded sums), without importing ``torch._dynamo`` into eager programs:
    ``torch.compiler.disable`` at import time would add about two seconds to ``import geoptim``
    and load sympy. Inside :func:`geoptim._stats.whole_tensors` (:mod:`geoptim._gpu`'s
    compiled references) ``fn`` is traced like any other function."""
    disabled = torch._disable_dynamo(fn)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling() and not tracing_whole_tensors():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return call


def check_nonnegative(name: str, value: float) -> float:
    """``value`` must be a finite number >= 0."""
    if isinstance(value, Tensor):
        value = value.item()
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_lr(lr: float | Tensor) -> float | Tensor:
    """A finite learning rate >= 0: a number, or a one-element tensor kept as it is (as in
    ``torch.optim``: a scheduler then updates it in place, and a compiled step reads its value
    without recompiling)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
        check_nonnegative("lr", lr.item())
        return lr
    return check_nonnegative("lr", lr)


def check_unit_interval(name: str, value: float) -> float:
    """``value`` must lie in [0, 1) (momentum coefficients, betas)."""
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_betas(betas: Sequence[float], count: int) -> tuple[float, ...]:
    """A tuple of ``count`` coefficients, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"betas must be a tuple of {count} numbers in [0, 1), got {betas!r}")
    return tuple(check_unit_interval(f"betas[{i}]", b) for i, b in enumerate(betas))


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


# ---------------------------------------------------------------- precision


def working_copies(tensors: Sequence[Tensor]) -> list[Tensor]:
    """float32 copies of 16-bit tensors; float32/float64 tensors themselves (no copy).

    Kernels do their arithmetic on these, so the l_p map, norms and sums of bf16 parameters are
    computed in float32; :func:`write_back` stores the results into the original tensors.
    """
    return [t.float() if t.dtype in LOW_PRECISION else t for t in tensors]


def write_back(targets: Sequence[Tensor], working: Sequence[Tensor]) -> None:
    """Copy each working tensor into its target where :func:`working_copies` made a copy."""
    for target, work in zip(targets, working):
        if work is not target:
            target.copy_(work)


# ---------------------------------------------------------------- the optimizer skeleton


def scalar_dtype() -> torch.dtype:
    """The dtype of ``state["step"]``: float64 under a float64 default dtype, else float32
    (as in ``torch.optim``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class GeoOptimizer(Optimizer):
    """Base class: closure handling, gradient collection, lazy state, the step counter.

    Every parameter's state holds ``step`` (a scalar tensor of :func:`scalar_dtype`, as in
    ``torch.optim``), incremented each time the parameter is updated. Parameters whose ``grad``
    is ``None`` are skipped; sparse gradients raise. ``p.grad`` is never modified. A complex
    parameter is updated exactly as its ``torch.view_as_real`` would be (its state stays complex).

    Every param group holds the implementation flags ``maximize``, ``foreach``, ``fused``
    (:func:`geoptim._compiled.kernel_mode`) and ``differentiable`` (only ``False``: the fused
    kernels and the in-place reference kernels are not differentiable).
    """

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        flags = {"maximize": maximize, "foreach": foreach, "fused": fused}
        super().__init__(params, {**defaults, **flags, "differentiable": differentiable})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for flag in ("foreach", "fused"):
            if group[flag] not in (None, True, False):
                raise ValueError(f"{flag} must be None, True or False, got {group[flag]!r}")
        if group["differentiable"]:
            raise ValueError(
                f"{type(self).__name__} does not support differentiable=True: its kernels "
                "update the parameters in place under torch.no_grad()"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Back-fill what older or foreign state dicts lack: the implementation flags of every
        group (torch's defaults) and tensor ``step`` counters."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in IMPLEMENTATION_DEFAULTS.items():
                group.setdefault(key, value)
        for param_state in self.state.values():
            step = param_state.get("step")
            if step is not None and not isinstance(step, Tensor):
                param_state["step"] = torch.tensor(float(step), dtype=scalar_dtype())

    # -- to implement
    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> None:
        raise NotImplementedError

    # -- shared
    def _plan(self, group: dict[str, Any]) -> GroupPlan:
        """The group's :class:`GroupPlan`, kept between steps while its key holds: the same
        ``state`` dict holding as many entries, the same parameters, the same ones with a
        gradient (rebuilt every step for sharded or complex parameters, whose local views are
        made per step)."""
        params = group["params"]
        presence = tuple(p.grad is not None for p in params)
        key = (tuple(map(id, params)), presence, len(self.state))
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(id(group))
        if plan is None or plan.key != key or plan.state is not self.state or not plan.counting():
            plan = plans[id(group)] = self._build_plan(group, key)
        return plan

    def _build_plan(self, group: dict[str, Any], key: tuple[Any, ...]) -> GroupPlan:
        """Create missing state and list the group's parameters that have a gradient (for
        DTensor parameters, FSDP2: their local shards) and their states.

        For DTensor parameters, state is created like the parameter (so distributed
        checkpointing sees DTensors), and the lists hold this rank's local shards: the kernels
        update them in place, and :mod:`geoptim._stats` reduces their statistics across ranks.
        """
        dtensor = dtensor_type()
        plan = GroupPlan(key, self.state, layouts_of(group["params"]))
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
                self._init_state(param, state, group)
            plan.owners.append(param)
            if dtensor is not None and isinstance(param, dtensor):
                param, state = param.to_local(), local_state(state)
                plan.kept = False
            if param.is_complex():
                param, state = as_real(param), as_real_state(state)
                plan.kept = False
            plan.params.append(param)
            plan.states.append(state)
        if plan.kept:
            plan.pack_step_counters()
        else:  # rebuilt next step
            plan.key = ()
        return plan

    def _collect(
        self, group: dict[str, Any]
    ) -> tuple[GroupPlan, list[Tensor], list[Tensor], list[dict[str, Any]]]:
        """The group's plan, its parameters that have a gradient, their gradients (negated
        under ``maximize``) and their states; every step counter advanced by one (one
        vectorised op for the group)."""
        plan = self._plan(group)
        if plan.kept:  # plain real tensors
            grads = [p.grad for p in plan.owners]
        else:
            grads = [as_real(local(p.grad)) for p in plan.owners]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients; "
                "use torch.optim.SparseAdam or dense gradients"
            )
        if group["maximize"]:
            grads = torch._foreach_neg(grads) if grads else grads
        if plan.counter is not None:
            plan.counter.add_(1.0)
        elif plan.states:
            torch._foreach_add_([s["step"] for s in plan.states], 1.0)
        return plan, plan.params, grads, plan.states

    def _step_groups(self, **update_kwargs: Any) -> None:
        for index, group in enumerate(self.param_groups):
            plan, params, grads, states = self._collect(group)
            layouts = plan.layouts
            present = labels = None
            if any(layouts):
                # Sharded tensors take the multi-tensor path: every rank must reduce the same
                # statistics, and the fused kernels pick tensors by their (local) size. A rank
                # without gradients still takes part in the reductions (other ranks may have
                # some): the single-tensor kernels take empty lists and reduce what the others do.
                if not any(p.requires_grad for p in group["params"]):
                    continue
                group = {**group, "fused": False}
                if not params:
                    group["foreach"] = False
                present = [p.grad is not None for p in group["params"]]
                labels = parameter_labels(group, f"param group {index}, ")
            elif not params:
                continue
            with sharded(layouts, present, labels):
                self._update(group, params, grads, states, **update_kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step; returns the closure's loss (``None`` without a closure)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_groups()
        return loss


@dataclass(eq=False)
class GroupPlan:
    """What a param group's step works on, kept between steps (:meth:`GeoOptimizer._plan`):
    ``key`` (the parameters and which have a gradient), the optimizer ``state`` it was built
    from, the parameters' ``layouts``, and for the parameters with a gradient: the parameters
    themselves (``owners``), the tensors the kernels update (``params``: local shards, real
    views) and their ``states``. ``kept``: whether it may be reused; ``counter``: for a kept
    plan, one tensor whose elements are the ``step`` counters (each ``state["step"]`` a
    0-dimensional view of it), advanced by one op per step."""

    key: tuple[Any, ...]
    state: Any
    layouts: list[Any]
    owners: list[Tensor] = field(default_factory=list)
    params: list[Tensor] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    kept: bool = True
    counter: Tensor | None = None

    def pack_step_counters(self) -> None:
        """Make every ``state["step"]`` a view of one :attr:`counter` (same values and dtype),
        when they share a dtype and device."""
        steps = [s["step"] for s in self.states]
        if not steps or any(t.dim() or t.dtype != steps[0].dtype for t in steps):
            return
        if any(t.device != steps[0].device for t in steps):
            return
        self.counter = torch.stack(steps)
        for index, state in enumerate(self.states):
            state["step"] = self.counter[index]

    def counting(self) -> bool:
        """Whether the step counters are still the views of :attr:`counter` (a user may have
        replaced one)."""
        if self.counter is None:
            return True
        return all(s["step"]._base is self.counter for s in self.states)


def local_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` with every DTensor replaced by its local shard (same storage)."""
    return {key: local(value) for key, value in state.items()}


def as_real(tensor: Tensor) -> Tensor:
    """A complex tensor as its real view (``torch.view_as_real``); any other tensor itself."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def as_real_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` with every complex tensor replaced by its real view."""
    return {key: as_real(v) if isinstance(v, Tensor) else v for key, v in state.items()}
