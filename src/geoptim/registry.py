"""A registry of optimizers by name: ``create_optimizer(model, "lion", lr=1e-4)``.

``sgd``, ``sgdm`` and ``adamw`` are ``torch.optim`` itself; every other name is a geoptim class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def _factories() -> dict[str, tuple[Callable[..., torch.optim.Optimizer], dict[str, Any]]]:
    import geoptim as g

    return {
        "sgd": (torch.optim.SGD, {"momentum": 0.0}),
        "sgdm": (torch.optim.SGD, {"momentum": 0.9}),
        "adamw": (torch.optim.AdamW, {}),
        "lion": (g.Lion, {}),
        "adan": (g.Adan, {}),
        "lpsgd": (g.LPSGD, {}),
        "lpsgdm": (g.LPSGDM, {}),
        "sepnorm": (g.SepNorm, {}),
        "ortsepnorm": (g.OrtSepNorm, {}),
        "normsgd": (g.NormSGD, {}),
        "signum": (g.Signum, {}),
        "signsgd": (g.Signum, {"momentum": 0.0}),
        "adamw_agr": (g.AdamWAGR, {}),
        "adan_agr": (g.AdanAGR, {}),
    }


def list_optimizers() -> list[str]:
    """The registry's names, sorted."""
    return sorted(_factories())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two param groups: weights (``ndim >= 2``) with ``weight_decay``, and biases and
    normalisation weights (``ndim <= 1``) without. Frozen parameters are left out; an empty
    group is dropped."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def create_optimizer(
    model_or_params: nn.Module | ParamsT,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name``.

    A ``nn.Module`` is split by :func:`param_groups` (no weight decay on biases and normalisation
    weights); an iterable of tensors or param-group dicts is used as given, with ``weight_decay``
    as the default. ``kwargs`` go to the optimizer's constructor, over the registry's defaults.
    """
    factories = _factories()
    key = name.lower()
    if key not in factories:
        raise ValueError(
            f"unknown optimizer name {name!r}; known names: {', '.join(sorted(factories))}"
        )
    cls, defaults = factories[key]
    if isinstance(model_or_params, nn.Module):
        params: Any = param_groups(model_or_params, weight_decay)
    else:
        params = list(model_or_params)
    return cls(params, lr=lr, weight_decay=weight_decay, **{**defaults, **kwargs})
