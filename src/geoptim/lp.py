r"""LPSGD and LPSGDM: steepest descent under the l_p norm, with a cosine schedule on p.

Steepest descent under :math:`\|\cdot\|_p` moves each coordinate by
:math:`-\mathrm{sign}(g_i)|g_i|^{1/(p-1)}` (up to a global factor that only rescales the step).
geoptim uses the stabilised coordinate map of the LPSGD paper

.. math::

    \rho(p) = \frac{p-2}{p-1}, \qquad \phi_p(u) = \frac{u}{(|u| + \epsilon)^{\rho(p)}},

so :math:`\phi_2(u) = u` (SGD) and :math:`\phi_p \to \mathrm{sign}` as :math:`p \to \infty`
(``p=float("inf")`` is allowed and gives :math:`u/(|u|+\epsilon)`). LPSGDM adds momentum and
decoupled weight decay:

.. math::

    m \leftarrow \beta m + (1 - \tau) g, \qquad
    w \leftarrow w (1 - \eta\lambda) - \eta\, \phi_p(m),

with dampening :math:`\tau = \beta` by default (an EMA, buffer starting at 0) or ``dampening=0``
for heavy-ball momentum. The current ``p`` lives in ``group["p"]``; :class:`CosinePScheduler`
anneals it from ``p_max`` to 2 as in the paper's eq. 19.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from geoptim import _compiled, _gpu
from geoptim._base import (
    GeoOptimizer,
    ParamsT,
    check_lr,
    check_nonnegative,
    check_unit_interval,
    eager,
    working_copies,
    write_back,
)

__all__ = [
    "LPSGD",
    "LPSGDM",
    "CosinePScheduler",
    "lp_exponent",
    "lpsgdm_fused",
    "lpsgdm_multi",
    "lpsgdm_single",
]


def check_p(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or math.isnan(value) or value < 2:
        raise ValueError(f"{name} must be a number >= 2 (float('inf') means sign), got {value!r}")
    return float(value)


def lp_exponent(p: float | Tensor) -> float | Tensor:
    """``rho(p) = (p - 2) / (p - 1)``: 0 at ``p = 2``, 1 at ``p = inf`` (a tensor ``p``, finite,
    gives a tensor)."""
    if isinstance(p, Tensor):
        return (p - 2.0) / (p - 1.0)
    return 1.0 if math.isinf(p) else (p - 2.0) / (p - 1.0)


def lpsgdm_single(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float,
    p: float | Tensor,
    eps: float,
) -> None:
    """Reference kernel, one tensor at a time. ``momentum_buffers=None``: no momentum (LPSGD)."""
    rho = lp_exponent(p)
    buffers = momentum_buffers if momentum_buffers is not None else [None] * len(params)
    for param, grad, buffer in zip(params, grads, buffers):
        (w,) = working_copies([param])
        (g,) = working_copies([grad])
        if buffer is None:
            u = g
        else:
            (u,) = working_copies([buffer])
            u.mul_(momentum).add_(g, alpha=1.0 - dampening)
            write_back([buffer], [u])
        if weight_decay != 0:
            w.mul_(1.0 - lr * weight_decay)
        if not isinstance(rho, Tensor) and rho == 0:
            w.add_(u, alpha=-lr)
        else:
            w.add_(u.abs().add_(eps).pow_(-rho).mul_(u), alpha=-lr)
        write_back([param], [w])


def lpsgdm_multi(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    p: float,
    eps: float,
) -> None:
    """Multi-tensor kernel: the same arithmetic as :func:`lpsgdm_single` with foreach ops."""
    rho = lp_exponent(p)
    w = working_copies(params)
    g = working_copies(grads)
    if momentum_buffers is None:
        u = g
    else:
        u = working_copies(momentum_buffers)
        torch._foreach_mul_(u, momentum)
        torch._foreach_add_(u, g, alpha=1.0 - dampening)
        write_back(momentum_buffers, u)
    if weight_decay != 0:
        torch._foreach_mul_(w, 1.0 - lr * weight_decay)
    if rho == 0:
        torch._foreach_add_(w, u, alpha=-lr)
    else:
        direction = torch._foreach_abs(u)
        torch._foreach_add_(direction, eps)
        torch._foreach_pow_(direction, -rho)
        torch._foreach_mul_(direction, u)
        torch._foreach_add_(w, direction, alpha=-lr)
    write_back(params, w)


@eager  # opaque to torch.compile: the C kernels run eagerly
def lpsgdm_fused(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    p: float,
    eps: float,
) -> None:
    """Fused kernel (:mod:`geoptim._compiled`): the arithmetic of :func:`lpsgdm_single` in one
    pass, ``w, m <- f(w, g, m)``; other tensors take :func:`lpsgdm_multi`."""
    kwargs = {"lr": lr, "momentum": momentum, "dampening": dampening}
    kwargs |= {"weight_decay": weight_decay, "p": p, "eps": eps}
    fused, rest = _compiled.split_fusable(params, grads, momentum_buffers)
    if rest:
        pick = _compiled.pick
        lpsgdm_multi(pick(params, rest), pick(grads, rest), pick(momentum_buffers, rest), **kwargs)
    if not fused:
        return
    rho = lp_exponent(p)
    decay = 1.0 - lr * weight_decay if weight_decay != 0 else 1.0
    lists = [_compiled.pick(ts, fused) for ts in (params, grads, momentum_buffers)]
    flags = (momentum_buffers is not None) | (2 * (rho != 0))
    scalars = (lr, momentum, 1.0 - dampening, decay, eps, rho)
    _compiled.launch_by_dtype("lp", lists, scalars, flags=flags, written=(0, 2))


class LPSGDM(GeoOptimizer):
    r"""l_p steepest descent with momentum (LPSGDM).

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\eta` (paper: 1e-3 to 1e-2 with warmup and cosine decay).
        momentum: :math:`\beta` in [0, 1).
        dampening: ``None`` (default) for the EMA ``m = beta*m + (1-beta)*g``; a number ``tau``
            gives ``m = beta*m + (1-tau)*g`` as in ``torch.optim.SGD`` (``0``: heavy-ball).
        p: the norm's exponent, >= 2 (``float("inf")``: sign). Driven by :class:`CosinePScheduler`.
        weight_decay: decoupled, ``w *= 1 - lr*weight_decay``.
        eps: :math:`\epsilon` of the coordinate map.
        maximize: ascend instead of descend.
        foreach: ``None``/``True`` multi-tensor kernel, ``False`` single-tensor reference.
        fused: ``True`` the fused one-pass kernel (:mod:`geoptim._compiled`) for every
            dense CPU tensor of any float dtype and layout (others: the multi-tensor kernel);
            ``None`` (default) the same unless ``foreach`` is given; ``False`` never.

    State per parameter: ``step``, ``momentum_buffer`` (starts at 0).
    """

    _has_momentum = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.9,
        dampening: float | None = None,
        p: float = 6.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        if dampening is not None:
            dampening = check_nonnegative("dampening", dampening)
            if dampening > 1:
                raise ValueError(f"dampening must be in [0, 1], got {dampening!r}")
        defaults = {
            "lr": check_lr(lr),
            "momentum": check_unit_interval("momentum", momentum),
            "dampening": dampening,
            "p": check_p("p", p),
            "weight_decay": check_nonnegative("weight_decay", weight_decay),
            "eps": check_nonnegative("eps", eps),
        }
        super().__init__(
            params,
            defaults,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
        )

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        if self._has_momentum:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> None:
        momentum = group["momentum"]
        dampening = momentum if group["dampening"] is None else group["dampening"]
        mode = _compiled.kernel_mode(group)
        kernel = {"fused": lpsgdm_fused, "multi": lpsgdm_multi, "single": lpsgdm_single}[mode]
        args = (
            params,
            grads,
            [s["momentum_buffer"] for s in states] if self._has_momentum else None,
        )
        p = check_p("group['p']", group["p"])
        kwargs = {"lr": group["lr"], "momentum": momentum, "dampening": dampening}
        kwargs |= {"weight_decay": group["weight_decay"], "p": p, "eps": group["eps"]}
        if _gpu.applies(mode, params):
            # p = 2 (plain SGD) and p = inf (sign) are other graphs; any other p is a tensor
            varying = ("lr", "p") if 2 < p < math.inf else ("lr",)
            _gpu.run(
                lpsgdm_single, lambda: kernel(*args, **kwargs), *args, varying=varying, **kwargs
            )
        else:
            kernel(*args, **kwargs)


class LPSGD(LPSGDM):
    r"""l_p steepest descent without momentum: ``w = w*(1 - lr*wd) - lr*phi_p(g)``.

    ``LPSGD(p=2)`` is ``torch.optim.SGD`` (with decoupled weight decay). No momentum state.
    """

    _has_momentum = False

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        p: float = 6.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=0.0,
            dampening=0.0,
            p=p,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            differentiable=differentiable,
        )


class CosinePScheduler(LRScheduler):
    r"""Anneals every param group's ``p`` along a half cosine (LPSGD paper, eq. 19):

    .. math:: p_k = p_{min} + (p_{max} - p_{min}) \frac{1 + \cos(\pi k / T_{max})}{2},

    and :math:`p_{min}` once :math:`k \ge T_{max}`. A ``torch.optim.lr_scheduler.LRScheduler``
    that drives ``group["p"]`` and leaves ``group["lr"]`` alone, so it goes wherever LR
    schedulers go: Lightning's ``configure_optimizers``, ``ChainedScheduler`` (step p and the
    learning rate together), ``SequentialLR``, Hugging Face ``Trainer`` (see
    :mod:`geoptim.integrations`). Each :meth:`step` advances ``k = last_epoch`` by one (once per
    epoch, or per step if you prefer). As for torch's schedulers, construction with
    ``last_epoch=-1`` starts at ``k = 0`` (``p = p_max``) and ``last_epoch=j`` resumes at
    ``k = j + 1``; :meth:`state_dict` / :meth:`load_state_dict` round-trip the position.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        p_max: float,
        T_max: int,
        p_min: float = 2.0,
        last_epoch: int = -1,
    ) -> None:
        p_min = check_p("p_min", p_min)
        p_max = check_p("p_max", p_max)
        if math.isinf(p_max) or p_max < p_min:
            raise ValueError(f"p_max must be finite and >= p_min={p_min}, got {p_max!r}")
        if not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"T_max must be an integer >= 1, got {T_max!r}")
        if not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")
        for group in optimizer.param_groups:
            if "p" not in group:
                raise ValueError(
                    f"{type(optimizer).__name__} has no 'p' in its param groups; "
                    "CosinePScheduler drives LPSGD/LPSGDM"
                )
            # torch's base class reads initial_lr when resuming; this scheduler never uses it
            group.setdefault("initial_lr", group["lr"])
        self.p_max = p_max
        self.p_min = p_min
        self.T_max = T_max
        super().__init__(optimizer, last_epoch)

    def get_p(self, k: int) -> float:
        """The schedule's value at ``k``."""
        if k >= self.T_max:
            return self.p_min
        return self.p_min + (self.p_max - self.p_min) * (1 + math.cos(math.pi * k / self.T_max)) / 2

    def get_lr(self) -> list[float | Tensor]:
        """The learning rates, unchanged: this scheduler moves ``p`` only."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def _apply_p(self) -> None:
        p = self.get_p(max(self.last_epoch, 0))
        for group in self.optimizer.param_groups:
            group["p"] = p

    def step(self, epoch: int | None = None) -> None:
        """Advance ``k`` by one (or set it to ``epoch``, as torch's deprecated form does) and set
        every group's ``p``."""
        super().step(epoch)
        self._apply_p()

    def _update_lr(self, epoch: int | None = None) -> None:
        # torch >= 2.7 routes step() and SequentialLR's milestone restarts through this hook
        super()._update_lr(epoch)
        self._apply_p()

    def get_last_p(self) -> list[float]:
        """Every param group's current ``p``."""
        return [group["p"] for group in self.optimizer.param_groups]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule and set every group's ``p`` to the restored position."""
        super().load_state_dict(state_dict)
        self._apply_p()
