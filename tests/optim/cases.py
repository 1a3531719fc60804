"""Shared test fixtures: every optimizer configuration under test, and a synthetic problem."""

from __future__ import annotations

from collections.abc import Callable

import torch

import geoptim

# name -> factory(params, foreach) covering every class and every option that changes the kernel.
CASES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "lpsgd_p4": lambda ps, **kw: geoptim.LPSGD(ps, lr=0.05, p=4.0, weight_decay=0.1, **kw),
    "lpsgd_p2": lambda ps, **kw: geoptim.LPSGD(ps, lr=0.05, p=2.0, **kw),
    "lpsgdm_p6": lambda ps, **kw: geoptim.LPSGDM(ps, lr=0.05, p=6.0, weight_decay=0.1, **kw),
    "lpsgdm_heavyball": lambda ps, **kw: geoptim.LPSGDM(ps, lr=0.05, p=3.0, dampening=0, **kw),
    "lpsgdm_inf": lambda ps, **kw: geoptim.LPSGDM(ps, lr=0.05, p=float("inf"), **kw),
    "lion": lambda ps, **kw: geoptim.Lion(ps, lr=0.01, weight_decay=0.1, **kw),
    "sepnorm_tensor": lambda ps, **kw: geoptim.SepNorm(ps, lr=0.01, weight_decay=0.1, **kw),
    "sepnorm_element": lambda ps, **kw: geoptim.SepNorm(ps, lr=0.01, grouping="element", **kw),
    "sepnorm_global": lambda ps, **kw: geoptim.SepNorm(ps, lr=0.01, grouping="global", **kw),
    "ortsepnorm_tensor": lambda ps, **kw: geoptim.OrtSepNorm(ps, lr=0.01, weight_decay=0.5, **kw),
    "ortsepnorm_element": lambda ps, **kw: geoptim.OrtSepNorm(
        ps, lr=0.01, grouping="element", **kw
    ),
    "ortsepnorm_global": lambda ps, **kw: geoptim.OrtSepNorm(
        ps, lr=0.01, grouping="global", weight_decay=0.5, **kw
    ),
    "normsgd": lambda ps, **kw: geoptim.NormSGD(ps, lr=0.1, weight_decay=0.1, **kw),
    "signum": lambda ps, **kw: geoptim.Signum(ps, lr=0.01, weight_decay=0.1, **kw),
    "signsgd": lambda ps, **kw: geoptim.Signum(ps, lr=0.01, momentum=0.0, **kw),
    "adan": lambda ps, **kw: geoptim.Adan(ps, lr=0.01, weight_decay=0.02, **kw),
    "adan_noprox_clip": lambda ps, **kw: geoptim.Adan(
        ps, lr=0.01, weight_decay=0.02, no_prox=True, max_grad_norm=0.5, **kw
    ),
    "adamw_agr": lambda ps, **kw: geoptim.AdamWAGR(ps, lr=0.01, weight_decay=0.01, **kw),
    "adamw_agr_until": lambda ps, **kw: geoptim.AdamWAGR(ps, lr=0.01, agr_until=3, **kw),
    "adan_agr": lambda ps, **kw: geoptim.AdanAGR(
        ps, lr=0.01, weight_decay=0.02, max_grad_norm=0.5, **kw
    ),
}

SHAPES = [(4, 3), (0,), (5,), (1,), (2, 3, 2)]


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
        for s in SHAPES
    ]


def make_grads(step: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Gradients for step ``step``: random, with parameter 2's gradient None at step 3."""
    gen = torch.Generator().manual_seed(1000 * seed + step)
    grads = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    if step == 3:
        grads[2] = None
    return grads


def run_steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range, **kw) -> None:
    for step in steps:
        for p, g in zip(params, make_grads(step, dtype=params[0].dtype, **kw)):
            p.grad = None if g is None else g.clone()
        opt.step()
