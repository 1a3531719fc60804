r"""Adan: adaptive Nesterov momentum (Xie et al.), as in the authors' reference code.

With :math:`\Delta g_t = g_t - g_{t-1}` (0 at the first step) and betas in the code's
convention (the paper's :math:`1-\beta`):

.. math::

    m &\leftarrow \beta_1 m + (1-\beta_1) g \\
    d &\leftarrow \beta_2 d + (1-\beta_2) \Delta g \\
    n &\leftarrow \beta_3 n + (1-\beta_3) (g + \beta_2 \Delta g)^2 \\
    \text{denom} &= \sqrt{n} / \sqrt{1-\beta_3^t} + \epsilon \\
    w &\leftarrow w - \frac{\eta}{1-\beta_1^t}\frac{m}{\text{denom}}
                    - \frac{\eta \beta_2}{1-\beta_2^t}\frac{d}{\text{denom}}

then the proximal weight decay :math:`w \leftarrow w / (1 + \eta\lambda)`; with ``no_prox=True``
the decay is :math:`w \leftarrow w(1-\eta\lambda)` before the step. ``max_grad_norm > 0`` first
scales every gradient by :math:`\min(1, c / (\|g\|_{global} + \epsilon))`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from geoptim import _compiled, _gpu
from geoptim._base import (
    GeoOptimizer,
    ParamsT,
    as_real,
    check_betas,
    check_lr,
    check_nonnegative,
    eager,
    working_copies,
    write_back,
)
from geoptim._stats import layout_of, parameter_labels, per_tensor_sums, sharded

__all__ = ["Adan", "adan_fused", "adan_multi", "adan_single", "step_sizes"]

#: The state tensors of every parameter, in the kernels' argument order.
ADAN_STATE = ("exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad")


def step_sizes(
    lr: float | Tensor, beta: float, steps: list[float] | Tensor, scale: float = 1.0
) -> Tensor:
    """``-lr * scale / (1 - beta**t)`` per tensor, in float64 (a tensor ``lr`` or ``steps``
    stays a tensor: a compiled step does not recompile when it changes)."""
    if isinstance(steps, Tensor):
        corrections = 1.0 - beta ** steps.to(torch.float64)
    else:
        corrections = torch.tensor([1.0 - beta**s for s in steps], dtype=torch.float64)
    if isinstance(lr, Tensor):
        lr = lr.to(torch.float64)
    return lr * -scale / corrections


def adan_single(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    clip: Tensor | float,
    first_moment_grads: list[Tensor] | None = None,
) -> None:
    """Reference kernel, one tensor at a time. ``prev_grads`` hold the previous (clipped)
    gradient and are overwritten with the current one. ``first_moment_grads`` (AGR's
    first-moment variant): what ``m`` averages instead of ``g`` (clipped alike); ``d``, ``n``
    and ``prev_grads`` still see ``g``."""
    sizes_m, sizes_d = step_sizes(lr, beta1, steps), step_sizes(lr, beta2, steps, beta2)
    for i, param in enumerate(params):
        w, g, m, d, n, g_prev = working_copies(
            [param, grads[i], exp_avgs[i], exp_avg_diffs[i], exp_avg_sqs[i], prev_grads[i]]
        )
        step = steps[i]
        g = g * clip
        diff = g - g_prev
        if first_moment_grads is None:
            m.lerp_(g, 1.0 - beta1)
        else:
            m.lerp_(working_copies([first_moment_grads[i]])[0] * clip, 1.0 - beta1)
        d.lerp_(diff, 1.0 - beta2)
        mixed = diff.mul_(beta2).add_(g)
        n.mul_(beta3).addcmul_(mixed, mixed, value=1.0 - beta3)
        denom = n.sqrt().div_((1.0 - beta3**step) ** 0.5).add_(eps)
        if no_prox and weight_decay != 0:
            w.mul_(1.0 - lr * weight_decay)
        w.addcdiv_(m, denom, value=sizes_m[i])
        w.addcdiv_(d, denom, value=sizes_d[i])
        if not no_prox and weight_decay != 0:
            w.div_(1.0 + lr * weight_decay)
        g_prev.copy_(g)
        write_back(
            [param, exp_avgs[i], exp_avg_diffs[i], exp_avg_sqs[i], prev_grads[i]],
            [w, m, d, n, g_prev],
        )


def adan_multi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    clip: Tensor | float,
    first_moment_grads: list[Tensor] | None = None,
) -> None:
    """Multi-tensor kernel: the arithmetic of :func:`adan_single` with foreach ops."""
    w, m, d, n, g_prev = (
        working_copies(ts) for ts in (params, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads)
    )
    g = torch._foreach_mul(working_copies(grads), clip)
    diff = torch._foreach_sub(g, g_prev)
    if first_moment_grads is None:
        torch._foreach_lerp_(m, g, 1.0 - beta1)
    else:
        first = torch._foreach_mul(working_copies(first_moment_grads), clip)
        torch._foreach_lerp_(m, first, 1.0 - beta1)
    torch._foreach_lerp_(d, diff, 1.0 - beta2)
    torch._foreach_mul_(diff, beta2)
    torch._foreach_add_(diff, g)
    torch._foreach_mul_(n, beta3)
    torch._foreach_addcmul_(n, diff, diff, value=1.0 - beta3)
    denom = torch._foreach_sqrt(n)
    torch._foreach_div_(denom, [(1.0 - beta3**s) ** 0.5 for s in steps])
    torch._foreach_add_(denom, eps)
    if no_prox and weight_decay != 0:
        torch._foreach_mul_(w, 1.0 - lr * weight_decay)
    torch._foreach_addcdiv_(w, m, denom, step_sizes(lr, beta1, steps).tolist())
    torch._foreach_addcdiv_(w, d, denom, step_sizes(lr, beta2, steps, beta2).tolist())
    if not no_prox and weight_decay != 0:
        torch._foreach_div_(w, 1.0 + lr * weight_decay)
    torch._foreach_copy_(g_prev, g)
    for targets, work in zip(
        (params, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads), (w, m, d, n, g_prev)
    ):
        write_back(targets, work)


@eager  # opaque to torch.compile: the C kernels run eagerly
def adan_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    clip: Tensor | float,
) -> None:
    """Fused kernel (:mod:`geoptim._compiled`): the arithmetic of :func:`adan_single` in one
    pass over the six tensors; other tensors take :func:`adan_multi`."""
    kwargs = {"lr": lr, "beta1": beta1, "beta2": beta2, "beta3": beta3, "eps": eps}
    kwargs |= {"weight_decay": weight_decay, "no_prox": no_prox, "clip": clip}
    columns = (params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads)
    fused, rest = _compiled.split_fusable(*columns)
    if rest:
        adan_multi(*(_compiled.pick(c, rest) for c in (*columns, steps)), **kwargs)
    if not fused:
        return
    lr = float(lr)
    decay = 1.0 - lr * weight_decay if no_prox and weight_decay != 0 else 1.0
    prox = 1.0 + lr * weight_decay if not no_prox and weight_decay != 0 else 1.0
    scalars = (1.0 - beta1, 1.0 - beta2, beta2, beta3, 1.0 - beta3, eps, decay, prox, float(clip))
    fused_steps = _compiled.pick(steps, fused)
    per_tensor = [
        [(1.0 - beta3**s) ** 0.5 for s in fused_steps],
        step_sizes(lr, beta1, fused_steps).tolist(),
        step_sizes(lr, beta2, fused_steps, beta2).tolist(),
    ]
    lists = [_compiled.pick(c, fused) for c in columns]
    _compiled.launch_by_dtype("adan", lists, scalars, per_tensor, written=(0, 2, 3, 4, 5))


class Adan(GeoOptimizer):
    r"""Adan (adaptive Nesterov momentum).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: ``(beta1, beta2, beta3)``, default ``(0.98, 0.92, 0.99)`` (code convention).
        eps: added to the denominator.
        weight_decay: proximal (``w /= 1 + lr*wd`` after the step) unless ``no_prox``
            (``w *= 1 - lr*wd`` before it). 0.02 is the authors' recommendation.
        no_prox: see ``weight_decay``.
        max_grad_norm: if > 0, every gradient is scaled by
            ``min(1, max_grad_norm / (global_norm + eps))``, the global norm over all groups.
        foreach, fused: as in :class:`geoptim.LPSGDM` (default: the one-pass fused kernel of
            :mod:`geoptim._compiled` for dense CPU tensors of any float dtype).

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_diff``, ``exp_avg_sq``,
    ``prev_grad`` (the previous clipped gradient; set to the first gradient at the first step).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_prox: bool = False,
        max_grad_norm: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ) -> None:
        defaults = {
            "lr": check_lr(lr),
            "betas": check_betas(betas, 3),
            "eps": check_nonnegative("eps", eps),
            "weight_decay": check_nonnegative("weight_decay", weight_decay),
            "no_prox": bool(no_prox),
            "max_grad_norm": check_nonnegative("max_grad_norm", max_grad_norm),
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
        for key in ADAN_STATE:
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def clip_coefficient(self) -> Tensor | float:
        """``min(1, max_grad_norm / (||g|| + eps))`` over every gradient of every group (from
        the first group's ``max_grad_norm`` and ``eps``); 1.0 when clipping is off."""
        max_norm, eps = self.defaults["max_grad_norm"], self.defaults["eps"]
        if self.param_groups:
            max_norm, eps = self.param_groups[0]["max_grad_norm"], self.param_groups[0]["eps"]
        if max_norm == 0:
            return 1.0
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        layouts = [layout_of(p) for p in params]
        if not any(layouts) and not grads:
            return 1.0
        present = [p.grad is not None for p in params]
        labels = None
        if any(layouts):
            labels = [
                label
                for index, group in enumerate(self.param_groups)
                for label in parameter_labels(group, f"param group {index}, ")
            ]
        # Global over shards, every rank taking part whatever its gradients; FSDP1 raises.
        with sharded(layouts, present, labels):
            total = per_tensor_sums("sumsq", [as_real(g) for g in grads]).sum().sqrt()
        return torch.clamp(max_norm / (total + eps), max=1.0)

    def _step_groups(self, clip: Tensor | float | None = None) -> None:
        super()._step_groups(clip=self.clip_coefficient() if clip is None else clip)

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        clip: Tensor | float = 1.0,
        first_moment_grads: list[Tensor] | None = None,
    ) -> None:
        steps = [float(s["step"]) for s in states]
        for grad, state, step in zip(grads, states, steps):
            if step == 1:  # g_prev starts as g, so the first difference is 0
                state["prev_grad"].copy_(grad * clip)
        beta1, beta2, beta3 = group["betas"]
        mode = _compiled.kernel_mode(group)
        kernel = {"fused": adan_fused, "multi": adan_multi, "single": adan_single}[mode]
        extra = {}
        if first_moment_grads is not None:  # no fused kernel for two gradients
            kernel = adan_single if mode == "single" else adan_multi
            extra = {"first_moment_grads": first_moment_grads}
        columns = [[s[key] for s in states] for key in ADAN_STATE]
        kwargs = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "beta3": beta3}
        kwargs |= {"eps": group["eps"], "weight_decay": group["weight_decay"]}
        kwargs |= {"no_prox": group["no_prox"], "clip": clip, **extra}

        def eager_kernel() -> None:
            kernel(params, grads, *columns, steps, **kwargs)

        if _gpu.applies(mode, params):
            # the step counts change every step: one float64 tensor, so no recompilation
            on_device = _gpu.as_scalar_tensor(steps, params[0].device)
            args = (params, grads, *columns, on_device)
            _gpu.run(adan_single, eager_kernel, *args, varying=("lr",), **kwargs)
        else:
            eager_kernel()
