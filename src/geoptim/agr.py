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
from functools import cache
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from geoptim import _compiled
from geoptim._base import working_copies
from geoptim._stats import layout_of, like, local, parameter_labels, per_tensor_sums, sharded
from geoptim.adan import Adan

__all__ = ["AdamWAGR", "AdanAGR", "agr", "agr_multi", "with_agr"]


def agr(grad: Tensor) -> Tensor:
    r"""Single-tensor reference: :math:`\Psi(g) = (1 - \alpha) g` with
    :math:`\alpha = |g| / \max(\sum|g|, \text{tiny})`, computed in float32 at least and returned
    in ``grad``'s dtype. (``1 - alpha`` is exactly 0 for a one-element tensor.)"""
    (g,) = working_copies([grad])
    total = per_tensor_sums("abs", [g])[0]
    total = total.clamp_min(torch.finfo(total.dtype).tiny)
    return g.abs().div_(-total).add_(1.0).mul_(g).to(grad.dtype)


def agr_multi(
    grads: list[Tensor], *, fused: bool | None = None, owner: Tensor | None = None
) -> list[Tensor]:
    """Multi-tensor :func:`agr`; new tensors, ``grads`` untouched.

    The sums go through :mod:`geoptim._stats`; then, unless ``fused=False``, every contiguous
    float32/float64 CPU gradient is transformed by the fused kernel of :mod:`geoptim._compiled`
    (one read of ``g``, one write of ``Psi(g)``) and the others with foreach ops, in the same
    arithmetic as :func:`agr`. With ``owner`` (a tensor that lives as long as the gradients'
    parameters, e.g. the first parameter) the fused results are views of a buffer kept for it
    between calls (:func:`geoptim._compiled.workspace`), valid until the next call with the
    same ``owner``; without, they are newly allocated."""
    g = working_copies(grads)
    totals = per_tensor_sums("abs", g)
    totals = totals.clamp_min(torch.finfo(totals.dtype).tiny).neg_()
    fused_rows, rest = ([], list(range(len(g)))) if fused is False else _compiled.split_fusable(g)
    out: list[Tensor] = list(g)
    if fused_rows:
        pick = _compiled.pick
        sources = pick(g, fused_rows)
        if owner is not None and all(x.dtype == sources[0].dtype for x in sources):
            targets = _compiled.workspace(owner, sources)
        else:
            targets = [torch.empty_like(x) for x in sources]
        neg_totals = pick(totals.tolist(), fused_rows)
        _compiled.launch_by_dtype("agr", [sources, targets], (), [neg_totals])
        for i, target in zip(fused_rows, targets):
            out[i] = target
    if rest:
        sub = [g[i] for i in rest]
        psi = torch._foreach_abs(sub)
        torch._foreach_div_(psi, [totals[i] for i in rest])
        torch._foreach_add_(psi, 1.0)
        torch._foreach_mul_(psi, sub)
        for i, p in zip(rest, psi):
            out[i] = p
    return [p.to(orig.dtype) for p, orig in zip(out, grads)]


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

        @contextmanager
        def _agr_gradients(self) -> Iterator[None]:
            """Swap every ``p.grad`` for ``Psi(p.grad)`` (in groups where AGR is on) and
            restore the user's gradients afterwards. Sharded (DTensor) gradients are
            transformed shard by shard, with their sums taken over the whole tensor."""
            originals: list[tuple[Tensor, Tensor]] = []
            for index, group in enumerate(self.param_groups):
                group["agr_step"] += 1
                until = group["agr_until"]
                if until is not None and group["agr_step"] > until:
                    continue
                params = [p for p in group["params"] if p.grad is not None]
                layouts = [layout_of(p) for p in group["params"]]
                # Nothing to transform here (e.g. a ZeroRedundancyOptimizer rank's share of the
                # group) and, unless sharded and trainable, nothing to reduce with other ranks.
                trainable = any(p.requires_grad for p in group["params"])
                if not params and not (any(layouts) and trainable):
                    continue
                grads = [p.grad for p in params]
                if any(g.is_sparse for g in grads):
                    raise RuntimeError("AGR does not support sparse gradients")
                shards = [local(g) for g in grads]
                if group.get("foreach") is False and not any(layouts):
                    transformed = [agr(shard) for shard in shards]
                else:
                    # Sharded gradients: one reduction for the whole group, which every rank
                    # takes part in whatever its gradients (:func:`geoptim._stats.sharded`).
                    # Psi(g) lives in a buffer kept for the group's first parameter: a fresh
                    # gradient-sized tensor every step costs more than the transform itself.
                    present = [p.grad is not None for p in group["params"]]
                    labels = (
                        parameter_labels(group, f"param group {index}, ") if any(layouts) else None
                    )
                    fused = False if group.get("foreach") is False else None
                    with sharded(layouts, present, labels):
                        transformed = agr_multi(
                            shards, fused=fused, owner=params[0] if params else None
                        )
                for param, grad, psi in zip(params, grads, transformed):
                    originals.append((param, grad))
                    param.grad = like(grad, psi)
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


AdamWAGR = with_agr(torch.optim.AdamW)
AdamWAGR.__module__ = __name__


class AdanAGR(with_agr(Adan)):  # type: ignore[misc]
    """Adan with AGR in front; the gradient-norm clip factor (``max_grad_norm``) is computed
    from the raw gradients and applied to ``Psi(g)``, as in the AGR paper's code."""

    def _before_agr(self) -> Any:
        return self.clip_coefficient()

    def _inner_step(self, raw: Any) -> None:
        self._step_groups(clip=raw)
