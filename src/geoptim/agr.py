r"""AGR — adaptive gradient regularisation (Jiang et al.), a gradient transform in front of any
optimizer.

Per parameter tensor, with the sum over the whole tensor,

.. math::

    \alpha = \frac{|g|}{\max(\sum |g|, \text{tiny})}, \qquad \Psi(g) = g - \alpha \odot g,

as the official code does it: ``p.grad`` is replaced by :math:`\Psi(g)` before the base
optimizer's step, so every moment of AdamW or Adan sees :math:`\Psi(g)`. Weight decay stays
decoupled. A one-element tensor gets :math:`\Psi(g) = 0` (it stops moving) — e.g. a scalar gain
or temperature; leave such parameters out of an AGR optimizer if they must train. The user's
``p.grad`` is restored after the step.

``agr_until=N`` applies AGR for the first ``N`` steps only (the paper's ablation finds that
switching it off late in training helps).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, partial
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from geoptim import _compiled, _gpu
from geoptim._base import (
    as_real,
    as_real_state,
    check_choice,
    eager,
    scalar_dtype,
    working_copies,
)
from geoptim._stats import (
    accumulation_dtype,
    layouts_of,
    like,
    local,
    local_sums,
    parameter_labels,
    per_tensor_sums,
    reduce_partial_sums,
    sharded,
)
from geoptim.adan import Adan

__all__ = [
    "AdamWAGR",
    "AdanAGR",
    "adamw_two_gradients",
    "agr",
    "agr_each",
    "agr_multi",
    "with_agr",
]


def agr(grad: Tensor) -> Tensor:
    r"""Single-tensor reference: :math:`\Psi(g) = (1 - \alpha) g` with
    :math:`\alpha = |g| / \max(\sum|g|, \text{tiny})`, computed in float32 at least and returned
    in ``grad``'s dtype. (``1 - alpha`` is exactly 0 for a one-element tensor.)"""
    (g,) = working_copies([grad])
    total = per_tensor_sums("abs", [g])[0]
    total = total.clamp_min(torch.finfo(total.dtype).tiny)
    return g.abs().div_(-total).add_(1.0).mul_(g).to(grad.dtype)


def agr_each(grads: list[Tensor]) -> list[Tensor]:
    """:func:`agr` of each gradient (what :mod:`geoptim._gpu` compiles for CUDA gradients)."""
    return [agr(g) for g in grads]


@eager  # opaque to torch.compile: the C kernel and the sums run eagerly
def agr_multi(
    grads: list[Tensor], *, fused: bool | None = None, owner: Tensor | None = None
) -> list[Tensor]:
    """Multi-tensor :func:`agr`; new tensors, ``grads`` untouched.

    Unless ``fused=False``, every gradient the fused kernels of :mod:`geoptim._compiled` take
    (any float dtype, any dense layout) is read twice: one pass sums ``|g|`` (in float64), one
    writes ``Psi(g)`` (in float32 at least, stored in ``g``'s dtype); the others take foreach
    ops, in the same arithmetic as :func:`agr`. The sums are completed through
    :mod:`geoptim._stats` (sharded gradients: over the whole tensor). With ``owner`` (a tensor
    that lives as long as the gradients' parameters, e.g. the first parameter) the fused
    results are views of a buffer kept for it between calls
    (:func:`geoptim._compiled.workspace`), valid until the next call with the same ``owner``;
    without, they are newly allocated."""
    rows = list(range(len(grads)))
    fused_rows, rest = ([], rows) if fused is False else _compiled.split_fusable(grads)
    pick = _compiled.pick
    if not rest:  # every gradient fused: the kernel's sums are the partial sums
        partial = _compiled.launch_by_dtype("abs_sums", [grads], reduces=True)[:, 0]
    else:
        partial = torch.zeros(len(grads), dtype=torch.float64)
        if fused_rows:
            sums = _compiled.launch_by_dtype("abs_sums", [pick(grads, fused_rows)], reduces=True)
            partial[fused_rows] = sums[:, 0]
        partial[rest] = local_sums("abs", pick(grads, rest), None).to(partial)
    totals = reduce_partial_sums(grads, partial).to(accumulation_dtype(grads))
    totals = totals.clamp_min(torch.finfo(totals.dtype).tiny).neg_()
    out: list[Tensor] = list(grads)
    if fused_rows:
        sources = pick(grads, fused_rows)
        if owner is not None and all(x.dtype == sources[0].dtype for x in sources):
            targets = _compiled.workspace(owner, sources)
        else:
            targets = [torch.empty_like(x) for x in sources]
        neg_totals = pick(totals.tolist(), fused_rows)
        _compiled.launch_by_dtype("agr", [sources, targets], (), [neg_totals])
        for i, target in zip(fused_rows, targets):
            out[i] = target
    if rest:
        sub = working_copies(pick(grads, rest))
        psi = torch._foreach_abs(sub)
        torch._foreach_div_(psi, [totals[i] for i in rest])
        torch._foreach_add_(psi, 1.0)
        torch._foreach_mul_(psi, sub)
        for i, p in zip(rest, psi):
            out[i] = p.to(grads[i].dtype)
    return out


def agr_active(group: dict[str, Any]) -> bool:
    """Whether AGR applies at the group's current ``agr_step`` (``agr_until`` not passed)."""
    return group["agr_until"] is None or group["agr_step"] <= group["agr_until"]


def as_complex_like(reference: Tensor, real: Tensor) -> Tensor:
    """``real`` (a ``view_as_real`` layout) as a complex tensor when ``reference`` is complex."""
    if not reference.is_complex():
        return real
    if real.storage_offset() % 2:  # a view into a shared workspace at an odd offset
        real = real.clone()
    return torch.view_as_complex(real)


@cache
def with_agr(optimizer_cls: type[Optimizer]) -> type[Optimizer]:
    """A subclass of ``optimizer_cls`` that applies AGR to the gradients before each step.

    The subclass takes the base class's arguments plus ``agr_until`` (``None``: always; ``N``:
    the first ``N`` steps). Each param group holds ``agr_until`` and ``agr_step`` (steps taken),
    so both survive ``state_dict()``. The transform uses the multi-tensor path unless the
    group's ``foreach`` is ``False``.
    """

    class AGROptimizer(optimizer_cls):  # type: ignore[valid-type, misc]
        def __init__(self, params: Any, *args: Any, agr_until: int | None = None, **kwargs: Any):
            if agr_until is not None and (not isinstance(agr_until, int) or agr_until < 0):
                raise ValueError(f"agr_until must be None or an integer >= 0, got {agr_until!r}")
            super().__init__(params, *args, **kwargs)
            self.defaults.update(agr_until=agr_until, agr_step=0)
            for group in self.param_groups:
                group.setdefault("agr_until", agr_until)
                group.setdefault("agr_step", 0)

        def add_param_group(self, param_group: dict[str, Any]) -> None:
            super().add_param_group(param_group)
            if self.param_groups[-1].get("differentiable"):
                raise ValueError(
                    f"{type(self).__name__} does not support differentiable=True: AGR "
                    "transforms the gradients under torch.no_grad()"
                )

        def __setstate__(self, state: dict[str, Any]) -> None:
            """Back-fill ``agr_until`` (the constructor's) and ``agr_step`` (0) in groups of
            state dicts saved without them, e.g. by the base optimizer."""
            super().__setstate__(state)
            for group in self.param_groups:
                group.setdefault("agr_until", self.defaults.get("agr_until"))
                group.setdefault("agr_step", 0)

        @contextmanager
        def _agr_gradients(self) -> Iterator[None]:
            """Swap every ``p.grad`` for ``Psi(p.grad)`` (in groups where AGR is on) and
            restore the user's gradients afterwards. Sharded (DTensor) gradients are
            transformed shard by shard, with their sums taken over the whole tensor."""
            originals: list[tuple[Tensor, Tensor]] = []
            for index, group in enumerate(self.param_groups):
                group["agr_step"] += 1
                if not agr_active(group) or group.get("moments", "both") == "first":
                    continue
                params = [p for p in group["params"] if p.grad is not None]
                layouts = layouts_of(group["params"])
                # Nothing to transform here (e.g. a ZeroRedundancyOptimizer rank's share of the
                # group) and, unless sharded and trainable, nothing to reduce with other ranks.
                trainable = any(p.requires_grad for p in group["params"])
                if not params and not (any(layouts) and trainable):
                    continue
                grads = [p.grad for p in params]
                if any(g.is_sparse for g in grads):
                    raise RuntimeError("AGR does not support sparse gradients")
                shards = [as_real(local(g)) for g in grads]
                single_tensor = group.get("foreach") is False and not group.get("fused")
                owner = params[0] if params else None
                if single_tensor and not any(layouts):
                    transformed = agr_each(shards)
                elif not any(layouts) and _gpu.applies("fused", shards):
                    eager_kernel = partial(agr_multi, shards, owner=owner)
                    transformed = _gpu.run(agr_each, eager_kernel, shards)
                else:
                    # Sharded gradients: one reduction for the whole group, which every rank
                    # takes part in whatever its gradients (:func:`geoptim._stats.sharded`).
                    # Psi(g) lives in a buffer kept for the group's first parameter: a fresh
                    # gradient-sized tensor every step costs more than the transform itself.
                    present = [p.grad is not None for p in group["params"]]
                    labels = (
                        parameter_labels(group, f"param group {index}, ") if any(layouts) else None
                    )
                    fused = False if single_tensor else None
                    with sharded(layouts, present, labels):
                        transformed = agr_multi(shards, fused=fused, owner=owner)
                for param, grad, psi in zip(params, grads, transformed):
                    originals.append((param, grad))
                    param.grad = like(grad, as_complex_like(grad, psi))
            try:
                yield
            finally:
                for param, grad in originals:
                    param.grad = grad

        def _inner_step(self, raw: Any) -> None:
            """The base optimizer's step on the transformed gradients (``raw`` is what
            :meth:`_before_agr` measured on the raw ones)."""
            base_step = optimizer_cls.step
            if getattr(base_step, "hooked", False):  # torch's profiling/hook wrapper: skip it,
                base_step = base_step.__wrapped__  # our own step already ran the hooks
            base_step(self)

        def _before_agr(self) -> Any:
            return None

        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            with torch.no_grad():
                raw = self._before_agr()
                with self._agr_gradients():
                    self._inner_step(raw)
            return loss

    AGROptimizer.__name__ = AGROptimizer.__qualname__ = f"{optimizer_cls.__name__}AGR"
    AGROptimizer.__doc__ = f"AGR in front of :class:`{optimizer_cls.__name__}`.\n\n" + (
        with_agr.__doc__ or ""
    )
    return AGROptimizer


MOMENTS = ("both", "first")


def adamw_two_gradients(
    params: list[Tensor],
    grads: list[Tensor],
    first_moment_grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    steps: list[float],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    foreach: bool,
) -> None:
    r"""AdamW whose first moment averages ``first_moment_grads`` and second moment ``grads``:

    .. math::

        w \leftarrow w(1-\eta\lambda), \quad m \leftarrow \beta_1 m + (1-\beta_1)\Psi(g), \quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        w \leftarrow w - \frac{\eta}{1-\beta_1^t}\frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t}+\epsilon}

    with :math:`\hat v = v` (or its running maximum with ``max_exp_avg_sqs``, amsgrad), in
    ``torch.optim.AdamW``'s operation order (equal to it when both gradients are equal).
    ``foreach``: multi-tensor ops, else one tensor at a time. State is updated in place."""
    lr = float(lr)
    sizes = [-lr / (1.0 - beta1**t) for t in steps]
    roots = [(1.0 - beta2**t) ** 0.5 for t in steps]
    if not foreach:
        for i, (w, g, psi, m, v) in enumerate(
            zip(params, grads, first_moment_grads, exp_avgs, exp_avg_sqs)
        ):
            w.mul_(1.0 - lr * weight_decay)
            m.lerp_(psi, 1.0 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            if max_exp_avg_sqs is not None:
                v = torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
            w.addcdiv_(m, (v.sqrt() / roots[i]).add_(eps), value=sizes[i])
        return
    torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, first_moment_grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    second = exp_avg_sqs
    if max_exp_avg_sqs is not None:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        second = max_exp_avg_sqs
    denominators = torch._foreach_sqrt(second)
    torch._foreach_div_(denominators, roots)
    torch._foreach_add_(denominators, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denominators, sizes)


class AdamWAGR(with_agr(torch.optim.AdamW)):  # type: ignore[misc]
    """``torch.optim.AdamW`` with AGR in front.

    ``moments="both"`` (default, the official code): AdamW itself, fed ``Psi(g)``, so both
    moments see it (every AdamW implementation, fused included). ``moments="first"`` (the AGR
    paper's prose): only the first moment averages ``Psi(g)``, the second moment the raw ``g``.
    One AdamW step cannot take two gradients, so that variant runs
    :func:`adamw_two_gradients` (single-tensor, or multi-tensor unless ``foreach=False``) on
    AdamW's own state layout (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``); it
    has no fused or capturable path.
    """

    def __init__(self, params: Any, *args: Any, moments: str = "both", **kwargs: Any) -> None:
        check_choice("moments", moments, MOMENTS)
        super().__init__(params, *args, **kwargs)
        self.defaults["moments"] = moments
        for group in self.param_groups:
            group.setdefault("moments", moments)
            if moments == "first" and (group["capturable"] or group["fused"]):
                raise ValueError("AdamWAGR(moments='first') has no fused or capturable path")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("moments", "both")

    def _inner_step(self, raw: Any) -> None:
        first = [g for g in self.param_groups if g["moments"] == "first"]
        for group in first:
            self._two_gradient_step(group)
        hidden = [(p, p.grad) for g in first for p in g["params"] if p.grad is not None]
        for param, _ in hidden:  # the base step updates only the other groups
            param.grad = None
        try:
            super()._inner_step(raw)
        finally:
            for param, grad in hidden:
                param.grad = grad

    def _two_gradient_step(self, group: dict[str, Any]) -> None:
        params, grads, states = [], [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
                for key in ("exp_avg", "exp_avg_sq") + ("max_exp_avg_sq",) * group["amsgrad"]:
                    state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["step"] += 1
            grad = -param.grad if group["maximize"] else param.grad
            params.append(as_real(param))
            grads.append(as_real(grad))
            states.append(as_real_state(state))
        if not params:
            return
        foreach = group["foreach"] is not False
        psi = grads
        if agr_active(group):
            psi = agr_multi(grads) if foreach else [agr(g) for g in grads]
        beta1, beta2 = group["betas"]
        adamw_two_gradients(
            params,
            grads,
            psi,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else None,
            [float(s["step"]) for s in states],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            foreach=foreach,
        )


class AdanAGR(with_agr(Adan)):  # type: ignore[misc]
    """Adan with AGR in front; the gradient-norm clip factor (``max_grad_norm``) is computed
    from the raw gradients and applied to ``Psi(g)``, as in the AGR paper's code.

    ``moments="both"`` (default, the official code): every moment sees ``Psi(g)``.
    ``moments="first"`` (the AGR paper's prose): only the first moment ``m`` averages
    ``Psi(g)``; ``d``, ``n`` and the previous gradient see the clipped raw ``g``. That variant
    needs two gradients per element, so it takes the multi-tensor (or, with ``foreach=False``,
    the single-tensor) kernel, never the fused one.
    """

    def __init__(self, params: Any, *args: Any, moments: str = "both", **kwargs: Any) -> None:
        check_choice("moments", moments, MOMENTS)
        super().__init__(params, *args, **kwargs)
        self.defaults["moments"] = moments
        for group in self.param_groups:
            group.setdefault("moments", moments)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("moments", "both")

    def _before_agr(self) -> Any:
        return self.clip_coefficient()

    def _inner_step(self, raw: Any) -> None:
        self._step_groups(clip=raw)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        clip: Tensor | float = 1.0,
    ) -> None:
        first = None
        if group["moments"] == "first" and agr_active(group):
            single = _compiled.kernel_mode(group) == "single"
            first = [agr(g) for g in grads] if single else agr_multi(grads)
        super()._update(group, params, grads, states, clip=clip, first_moment_grads=first)
