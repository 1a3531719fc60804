r"""Lion and its generalisations: SepNorm, OrtSepNorm, Normalized GD (NormSGD), Signum.

All share Lion's interpolated momentum (SepNorm paper; Lion: Chen et al. 2023):

.. math::

    u = \beta_1 m + (1-\beta_1) g, \quad
    w \leftarrow w(1 - \eta\lambda) - \eta\, D(u), \quad
    m \leftarrow \beta_2 m + (1-\beta_2) g,

and differ in the direction :math:`D(u)`:

========== ==================================================================================
Lion       :math:`\mathrm{sign}(u)` (computed as ``sign(u) + 0 u``, so a NaN or infinite
           gradient makes the weight NaN as in ``torch.optim``, instead of a silent 0 step)
SepNorm    :math:`N_l(u) = u_l \sqrt{|l|} / (\|u_l\|_2 + \epsilon)` per normalisation group
           :math:`l` — a tensor (default), an element (Lion up to eps), or the whole param
           group (``grouping="global"``: put tensors in one param group to normalise them
           together, e.g. a layer's weight and bias)
OrtSepNorm :math:`N_l` of :math:`u_l - (\langle w_l, u_l\rangle / \|w_l\|^2)\, w_l`, the part of
           :math:`u` orthogonal to the weight (no projection where :math:`w_l = 0`)
NormSGD    :math:`u / (\|u\|_2 + \epsilon)`, the norm over the whole param group
Signum     :math:`\mathrm{sign}(m)` with :math:`\beta_1 = \beta_2 = \beta`
           (``momentum=0``: signSGD)
========== ==================================================================================

Every class takes ``foreach`` and ``fused`` as :class:`geoptim.LPSGDM` does: by default the fused
kernels of :mod:`geoptim._compiled` update every dense CPU tensor (float32, float64, bfloat16,
float16; any memory layout) in one or two passes over memory.

For OrtSepNorm every group's norm converges to
:math:`\eta\sqrt{|l|}/\sqrt{2\eta\lambda - (\eta\lambda)^2}` whatever the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from geoptim import _compiled, _gpu
from geoptim._base import (
    GeoOptimizer,
    ParamsT,
    check_betas,
    check_choice,
    check_lr,
    check_nonnegative,
    check_unit_interval,
    eager,
    working_copies,
    write_back,
)
from geoptim._stats import (
    accumulation_dtype,
    global_numels,
    per_tensor_sums,
    reduce_partial_sums,
)

__all__ = [
    "GROUPINGS",
    "Lion",
    "NormSGD",
    "OrtSepNorm",
    "SepNorm",
    "Signum",
    "sepnorm_fused",
    "sepnorm_multi",
    "sepnorm_single",
]

GROUPINGS = ("tensor", "element", "global")
Direction = Literal["sign", "element", "tensor", "global", "global_norm"]


def _coefficients_from_sums(dots: Tensor, sq: Tensor, direction: Direction) -> Tensor:
    """``<w_l, u_l> / ||w_l||^2`` from the per-tensor ``dots`` and ``sq`` (one shared value for
    the global groupings); 0 where ``||w_l|| = 0``."""
    if direction.startswith("global"):
        dots, sq = dots.sum().expand_as(dots), sq.sum().expand_as(sq)
    return torch.where(sq > 0, dots / sq.clamp_min(torch.finfo(sq.dtype).tiny), 0.0)


def _scales_from_sums(sq: Tensor, sizes: Sequence[int], direction: Direction, eps: float) -> Tensor:
    """The factor each update tensor is multiplied by, from its ``sq = ||u_l||^2`` and element
    count: ``sqrt(n_l) / (||u_l|| + eps)``, with ``n_l`` and ``||u_l||`` over the whole group for
    ``"global"``, and the plain ``1 / (||u|| + eps)`` for ``"global_norm"`` (NormSGD)."""
    numels = torch.tensor(sizes, dtype=sq.dtype, device=sq.device)
    if direction == "tensor":
        return numels.sqrt() / (sq.sqrt() + eps)
    norm = sq.sum().sqrt()
    numerator = numels.sum().sqrt() if direction == "global" else torch.ones((), dtype=sq.dtype)
    return (numerator / (norm + eps)).expand_as(sq)


@eager  # geoptim._stats (sharded sums) runs eagerly under torch.compile
def _projection_coefficients(
    params: Sequence[Tensor], updates: Sequence[Tensor], direction: Direction
) -> Tensor:
    """:func:`_coefficients_from_sums` of the tensors themselves."""
    dots = per_tensor_sums("dot", params, updates)
    return _coefficients_from_sums(dots, per_tensor_sums("sumsq", params), direction)


@eager  # as above
def _normalisation_scales(updates: Sequence[Tensor], direction: Direction, eps: float) -> Tensor:
    """:func:`_scales_from_sums` of the update tensors themselves."""
    sq = per_tensor_sums("sumsq", updates)
    return _scales_from_sums(sq, global_numels(updates), direction, eps)


def sepnorm_single(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    direction: Direction,
    orthogonal: bool,
) -> None:
    """Reference kernel, one tensor at a time (the global groupings need one pass over all
    tensors for their shared statistics first)."""
    w = working_copies(params)
    g = working_copies(grads)
    m = working_copies(exp_avgs)
    updates = [mi.lerp(gi, 1.0 - beta1) for mi, gi in zip(m, g)]
    if orthogonal:
        if direction == "element":
            for wi, ui in zip(w, updates):
                ui.masked_fill_(wi != 0, 0.0)
        else:
            coefficients = _projection_coefficients(w, updates, direction)
            for wi, ui, c in zip(w, updates, coefficients.neg()):
                ui.addcmul_(wi, c)
    if direction in ("tensor", "global", "global_norm"):
        scales = _normalisation_scales(updates, direction, eps)
        for ui, s in zip(updates, scales):
            ui.mul_(s)
    for wi, ui, mi, gi in zip(w, updates, m, g):
        if direction == "sign":
            ui.copy_(ui.sign().add_(ui.mul(0.0)))
        elif direction == "element":
            ui.div_(ui.abs().add_(eps))
        if weight_decay != 0:
            wi.mul_(1.0 - lr * weight_decay)
        wi.add_(ui, alpha=-lr)
        mi.lerp_(gi, 1.0 - beta2)
    write_back(params, w)
    write_back(exp_avgs, m)


def sepnorm_multi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    direction: Direction,
    orthogonal: bool,
) -> None:
    """Multi-tensor kernel: the arithmetic of :func:`sepnorm_single` with foreach ops."""
    w = working_copies(params)
    g = working_copies(grads)
    m = working_copies(exp_avgs)
    updates = torch._foreach_lerp(m, g, 1.0 - beta1)
    if orthogonal:
        if direction == "element":
            for wi, ui in zip(w, updates):
                ui.masked_fill_(wi != 0, 0.0)
        else:
            coefficients = _projection_coefficients(w, updates, direction)
            torch._foreach_addcmul_(updates, w, list(coefficients.neg().unbind()))
    if direction == "sign":
        non_finite = torch._foreach_mul(updates, 0.0)  # NaN where u is NaN or inf, else 0
        torch._foreach_sign_(updates)
        torch._foreach_add_(updates, non_finite)
    elif direction == "element":
        denominators = torch._foreach_abs(updates)
        torch._foreach_add_(denominators, eps)
        torch._foreach_div_(updates, denominators)
    else:
        scales = _normalisation_scales(updates, direction, eps)
        torch._foreach_mul_(updates, list(scales.unbind()))
    if weight_decay != 0:
        torch._foreach_mul_(w, 1.0 - lr * weight_decay)
    torch._foreach_add_(w, updates, alpha=-lr)
    torch._foreach_lerp_(m, g, 1.0 - beta2)
    write_back(params, w)
    write_back(exp_avgs, m)


#: OrtSepNorm's fused path takes ``||u - c w||^2 = ||u||^2 - 2c<w,u> + c^2||w||^2`` from one
#: pass; where that is below this fraction of ``||u||^2`` (``u`` within about 0.6 degrees of
#: ``w``: the difference would lose more than 4 of float64's 16 digits), it is recomputed from
#: the projected update itself, as the reference does.
CANCELLATION = 1e-4


@eager  # opaque to torch.compile: the C kernels run eagerly
def sepnorm_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    direction: Direction,
    orthogonal: bool,
) -> None:
    """Fused kernel (:mod:`geoptim._compiled`): the arithmetic of :func:`sepnorm_single`.

    ``sign`` and ``element``: one pass, ``w, m <- f(w, g, m)``. The normalised directions need
    the statistics of ``u = lerp(m, g, 1 - beta1)`` first: a first pass reads ``g, m`` (and
    ``w`` for OrtSepNorm) and writes nothing but, per tensor, ``||u||^2`` (and ``<w, u>``,
    ``||w||^2``), accumulated in float64; they go through :mod:`geoptim._stats`; a second pass
    recomputes ``u`` and applies ``w <- w decay - lr s (u - c w)``, ``m <- lerp(m, g, 1 -
    beta2)``. No parameter-sized buffer. Tensors the fused kernels do not take (and, for the
    global groupings, the whole group if any of them) use :func:`sepnorm_multi`.
    """
    kwargs = {"lr": lr, "beta1": beta1, "beta2": beta2, "weight_decay": weight_decay, "eps": eps}
    fused, rest = _compiled.split_fusable(params, grads, exp_avgs)
    if rest and direction.startswith("global"):
        fused, rest = [], list(range(len(params)))
    if rest:
        pick = _compiled.pick
        sepnorm_multi(
            pick(params, rest),
            pick(grads, rest),
            pick(exp_avgs, rest),
            direction=direction,
            orthogonal=orthogonal,
            **kwargs,
        )
    if not fused:
        return
    w, g, m = (_compiled.pick(ts, fused) for ts in (params, grads, exp_avgs))
    decay = 1.0 - lr * weight_decay if weight_decay != 0 else 1.0
    if direction in ("sign", "element"):
        flags = (direction == "element") | (2 * orthogonal)
        scalars = (lr, 1.0 - beta1, 1.0 - beta2, decay, eps)
        _compiled.launch_by_dtype("lion", [w, g, m], scalars, flags=flags, written=(0, 2))
        return
    neg_c, scales, unsafe = _fused_statistics(w, g, m, 1.0 - beta1, direction, eps, orthogonal)
    if unsafe:  # u almost parallel to w: its projection is rounding noise, computed as ATen does
        pick = _compiled.pick
        sepnorm_multi(
            *(pick(x, unsafe) for x in (w, g, m)), direction=direction, orthogonal=True, **kwargs
        )
        keep = sorted(set(range(len(w))) - set(unsafe))
        w, g, m, neg_c, scales = (pick(x, keep) for x in (w, g, m, neg_c, scales))
    scalars = (lr, 1.0 - beta1, 1.0 - beta2, decay)
    _compiled.launch_by_dtype(
        "lion_scaled", [w, g, m], scalars, [scales, neg_c], flags=orthogonal, written=(0, 2)
    )


def _fused_statistics(
    w: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    weight: float,
    direction: Direction,
    eps: float,
    orthogonal: bool,
) -> tuple[list[float], list[float], list[int]]:
    """The per-tensor ``-c`` (projection coefficients, 0 without projection) and scales of
    :func:`sepnorm_fused`'s second pass, from one statistics pass over ``u = lerp(m, g,
    weight)``; and, for OrtSepNorm per tensor, the tensors whose ``||u - c w||^2`` the
    statistics cannot give (:data:`CANCELLATION`), to be updated by the multi-tensor kernel.
    (With a global coefficient, their ``||u - c w||^2`` is recomputed here instead.)"""
    partial = _compiled.launch_by_dtype(
        "lion_sums", [g, m, w if orthogonal else None], (weight,), flags=orthogonal, reduces=True
    )
    sums = reduce_partial_sums(w, partial)
    sq, unsafe = sums[:, 0], []
    coefficients = torch.zeros_like(sq)
    if orthogonal:
        dots, wsq = sums[:, 1], sums[:, 2]
        coefficients = _coefficients_from_sums(dots, wsq, direction)
        perp = sq - 2 * coefficients * dots + coefficients.square() * wsq
        unsafe = (perp < CANCELLATION * sq).nonzero().flatten().tolist()
        if unsafe and direction != "tensor":
            perp[unsafe] = _projected_sumsq(w, g, m, weight, coefficients[unsafe], unsafe)
            unsafe = []
        sq = perp.clamp_min(0.0)
    scales = _scales_from_sums(sq, global_numels(w), direction, eps)
    return coefficients.neg().tolist(), scales.tolist(), unsafe


def _projected_sumsq(
    w: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    weight: float,
    coefficients: Tensor,
    rows: list[int],
) -> Tensor:
    """``||u - c w||^2`` of tensors ``rows`` (``c`` from ``coefficients``, one per row),
    computed as :func:`sepnorm_multi` does."""
    ws, gs, ms = (working_copies(_compiled.pick(ts, rows)) for ts in (w, g, m))
    updates = torch._foreach_lerp(ms, gs, weight)
    neg_c = coefficients.neg().to(accumulation_dtype(ws)).unbind()
    torch._foreach_addcmul_(updates, ws, list(neg_c))
    return per_tensor_sums("sumsq", updates).to(coefficients)


class _InterpolatedMomentum(GeoOptimizer):
    """Shared machinery; subclasses say which direction and whether to project."""

    _orthogonal = False

    def _direction(self, group: dict[str, Any]) -> Direction:
        raise NotImplementedError

    def _betas(self, group: dict[str, Any]) -> tuple[float, float]:
        return group["betas"]

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> None:
        beta1, beta2 = self._betas(group)
        mode = _compiled.kernel_mode(group)
        kernel = {"fused": sepnorm_fused, "multi": sepnorm_multi, "single": sepnorm_single}[mode]
        args = (params, grads, [s["exp_avg"] for s in states])
        kwargs = {
            "lr": group["lr"],
            "beta1": beta1,
            "beta2": beta2,
            "weight_decay": group["weight_decay"],
            "eps": group.get("eps", 0.0),
            "direction": self._direction(group),
            "orthogonal": self._orthogonal,
        }
        if _gpu.applies(mode, params):
            _gpu.run(
                sepnorm_single, lambda: kernel(*args, **kwargs), *args, varying=("lr",), **kwargs
            )
        else:
            kernel(*args, **kwargs)


def _defaults(lr: float, betas: Sequence[float], weight_decay: float, **extra: Any) -> dict:
    return {
        "lr": check_lr(lr),
        "betas": check_betas(betas, 2),
        "weight_decay": check_nonnegative("weight_decay", weight_decay),
        **extra,
    }


class Lion(_InterpolatedMomentum):
    r"""Lion (EvoLved Sign Momentum): ``w = w*(1-lr*wd) - lr*sign(beta1*m + (1-beta1)*g)``,
    then ``m = beta2*m + (1-beta2)*g``. Defaults lr 1e-4, betas (0.9, 0.99), wd 0.

    State per parameter: ``step``, ``exp_avg`` (the momentum ``m``).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        defaults = _defaults(
            lr,
            betas,
            weight_decay,
        )
        super().__init__(
            params,
            defaults,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
        )

    def _direction(self, group: dict[str, Any]) -> Direction:
        return "sign"


class SepNorm(_InterpolatedMomentum):
    r"""SepNorm: Lion with ``sign`` replaced by the RMS normalisation
    ``N_l(u) = u_l * sqrt(|l|) / (||u_l||_2 + eps)`` per normalisation group ``l``.

    Args:
        grouping: ``"tensor"`` (default) — each tensor is a group; ``"element"`` — each
            element (Lion up to eps); ``"global"`` — the whole param group (one group holding
            every parameter gives normalized GD with momentum; to normalise a custom partition,
            make each part a param group).
        eps: guards the norm, so an all-zero update gives a zero step.

    Other arguments as :class:`Lion`. State per parameter: ``step``, ``exp_avg``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        grouping: str = "tensor",
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        defaults = _defaults(
            lr,
            betas,
            weight_decay,
            eps=check_nonnegative("eps", eps),
            grouping=check_choice("grouping", grouping, GROUPINGS),
        )
        super().__init__(
            params,
            defaults,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
        )

    def _direction(self, group: dict[str, Any]) -> Direction:
        return check_choice("group['grouping']", group["grouping"], GROUPINGS)  # type: ignore[return-value]


class OrtSepNorm(SepNorm):
    r"""OrtSepNorm: SepNorm of the interpolated update projected orthogonally to the weight,
    ``u_l - (<w_l, u_l> / ||w_l||^2) w_l`` (skipped where ``w_l = 0``).

    Each group's norm then tends to ``lr*sqrt(|l|) / sqrt(2*lr*wd - (lr*wd)^2)`` on any loss.
    With ``grouping="element"`` the projection removes every coordinate where ``w != 0``.
    """

    _orthogonal = True


class NormSGD(_InterpolatedMomentum):
    r"""Normalized gradient descent with Lion-style momentum:
    ``w = w*(1-lr*wd) - lr * u / (||u||_2 + eps)``, the norm over the whole param group.

    ``NormSGD(lr)`` equals ``SepNorm(grouping="global", lr=lr/sqrt(N))`` for ``N`` parameters in
    the group. ``betas=(0, 0)`` gives plain normalized GD. State: ``step``, ``exp_avg``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        defaults = _defaults(
            lr,
            betas,
            weight_decay,
            eps=check_nonnegative("eps", eps),
        )
        super().__init__(
            params,
            defaults,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
        )

    def _direction(self, group: dict[str, Any]) -> Direction:
        return "global_norm"


class Signum(_InterpolatedMomentum):
    r"""Signum: ``m = beta*m + (1-beta)*g``, ``w = w*(1-lr*wd) - lr*sign(m)``
    (Lion with ``beta1 = beta2 = beta``); ``momentum=0`` is signSGD.

    State per parameter: ``step``, ``exp_avg`` (the momentum ``m``).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        defaults = {
            "lr": check_lr(lr),
            "momentum": check_unit_interval("momentum", momentum),
            "weight_decay": check_nonnegative("weight_decay", weight_decay),
        }
        super().__init__(
            params,
            defaults,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
        )

    def _betas(self, group: dict[str, Any]) -> tuple[float, float]:
        return group["momentum"], group["momentum"]

    def _direction(self, group: dict[str, Any]) -> Direction:
        return "sign"
