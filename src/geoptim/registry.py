"""A registry of optimizers by name, in the manner of ``timm.optim``.

``create_optimizer(model, "lion")`` builds the optimizer registered as ``"lion"``;
:func:`register_optimizer` adds a name, :func:`get_optimizer_class` looks one up and
:func:`list_optimizers` lists them. ``sgd``, ``sgdm`` and ``adamw`` are ``torch.optim`` itself;
every other built-in name is a geoptim class.

A name's defaults are its class's defaults; a registered ``defaults`` dict holds only what the
name itself means: ``sgdm`` is SGD with ``momentum=0.9``, ``signsgd`` is Signum with
``momentum=0``. :func:`param_groups` splits a model into weight-decay / no-weight-decay groups,
with optional layer-wise learning-rate decay.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from geoptim.adan import Adan
from geoptim.agr import AdamWAGR, AdanAGR
from geoptim.lion import Lion, NormSGD, OrtSepNorm, SepNorm, Signum
from geoptim.lp import LPSGD, LPSGDM

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerInfo:
    """One registry entry: the class, the keyword arguments the name adds to the class's own
    defaults, and a one-line description."""

    name: str
    cls: OptimizerFactory
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, OptimizerInfo] = {}


def register_optimizer(
    name: str,
    cls: OptimizerFactory,
    defaults: dict[str, Any] | None = None,
    description: str = "",
    *,
    overwrite: bool = False,
) -> None:
    """Make ``cls`` available as ``name`` (case-insensitive) to :func:`create_optimizer`.

    ``cls(params, **kwargs)`` must build a ``torch.optim.Optimizer``; ``defaults`` are keyword
    arguments applied before the caller's. Re-registering a name needs ``overwrite=True``.
    """
    key = name.lower()
    if not key or not key.replace("_", "").isalnum():
        raise ValueError(f"optimizer name must be letters, digits and '_', got {name!r}")
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"optimizer name {name!r} is already registered (pass overwrite=True)")
    if not callable(cls):
        raise TypeError(f"cls must be an optimizer class or factory, got {cls!r}")
    _REGISTRY[key] = OptimizerInfo(key, cls, dict(defaults or {}), description)


def get_optimizer_info(name: str) -> OptimizerInfo:
    """The registry entry of ``name`` (case-insensitive); ``ValueError`` for an unknown name."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown optimizer name {name!r}; known names: {', '.join(list_optimizers())}"
        )
    return _REGISTRY[key]


def get_optimizer_class(name: str, bind_defaults: bool = False) -> OptimizerFactory:
    """The class registered as ``name``; with ``bind_defaults``, a ``functools.partial`` that
    also applies the name's defaults (``get_optimizer_class("sgdm", True)(params)`` is SGD with
    momentum 0.9)."""
    info = get_optimizer_info(name)
    if bind_defaults and info.defaults:
        return functools.partial(info.cls, **info.defaults)
    return info.cls


def list_optimizers(
    filter: str = "", with_description: bool = False
) -> list[str] | list[tuple[str, str]]:
    """The registered names, sorted; ``filter`` keeps names containing it. With
    ``with_description``, ``(name, description)`` pairs."""
    names = sorted(key for key in _REGISTRY if filter.lower() in key)
    if with_description:
        return [(key, _REGISTRY[key].description) for key in names]
    return names


def _matches(name: str, patterns: set[str]) -> bool:
    """``name`` is one of ``patterns`` or lies under one of them (``"pos_embed"``,
    ``"encoder.norm"`` match ``"encoder.norm.weight"``)."""
    return any(name == pattern or name.startswith(pattern + ".") for pattern in patterns)


def _top_level_layer(model: nn.Module) -> Callable[[str], int]:
    """The default layer index for layer-wise decay: the position of the parameter's top-level
    child module (``model.named_children()`` order); parameters held by ``model`` itself are
    layer 0."""
    index = {child: i for i, (child, _) in enumerate(model.named_children())}

    def layer_of(name: str) -> int:
        head = name.split(".", 1)[0]
        return index[head] if "." in name and head in index else 0

    return layer_of


def param_groups(
    model: nn.Module,
    weight_decay: float | None = None,
    *,
    no_weight_decay: Iterable[str] = (),
    exclude_bias_and_norm: bool = True,
    lr: float | None = None,
    layer_decay: float | None = None,
    layer_of: Callable[[str], int] | None = None,
) -> list[dict[str, Any]]:
    r"""Split ``model``'s trainable parameters into param groups.

    Weight decay: a parameter gets ``weight_decay = 0`` when its name is in ``no_weight_decay``
    or in ``model.no_weight_decay()`` (timm's convention; a module name covers everything in
    it), or, with ``exclude_bias_and_norm``, when it has ``ndim <= 1`` (biases, normalisation
    weights, scalars). Every other parameter gets ``weight_decay``; ``None`` leaves the key out,
    so the optimizer's default applies.

    Layer-wise learning-rate decay (``layer_decay`` = :math:`\gamma`): with layers numbered
    :math:`0 \dots L-1` by ``layer_of(name)`` (default: the order of ``model``'s top-level
    children), layer :math:`i` gets ``lr_scale`` :math:`= \gamma^{L-1-i}`, so the last layer
    keeps the full rate; with ``lr`` given, its group's ``lr`` is ``lr * lr_scale``
    (:func:`create_optimizer` applies the scale to the optimizer's default ``lr`` otherwise).

    Frozen parameters are left out; empty groups are dropped. Groups come in layer order,
    decayed group first.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
    excluded = set(no_weight_decay)
    if callable(getattr(model, "no_weight_decay", None)):
        excluded |= set(model.no_weight_decay())
    layer_of = layer_of or _top_level_layer(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layers = {name: layer_of(name) if layer_decay is not None else 0 for name, _ in named}
    n_layers = max(layers.values(), default=0) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in named:
        no_decay = _matches(name, excluded) or (exclude_bias_and_norm and param.ndim <= 1)
        key = (layers[name], no_decay)
        if key not in groups:
            group: dict[str, Any] = {"params": []}
            if no_decay:
                group["weight_decay"] = 0.0
            elif weight_decay is not None:
                group["weight_decay"] = weight_decay
            if layer_decay is not None:
                group["lr_scale"] = layer_decay ** (n_layers - 1 - layers[name])
                if lr is not None:
                    group["lr"] = lr * group["lr_scale"]
            groups[key] = group
        groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def create_optimizer(
    model_or_params: nn.Module | ParamsT,
    name: str,
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    no_weight_decay: Iterable[str] = (),
    exclude_bias_and_norm: bool = True,
    layer_decay: float | None = None,
    layer_of: Callable[[str], int] | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name``.

    A ``nn.Module`` is split by :func:`param_groups` (by default no weight decay on biases and
    normalisation weights, nor on the names in ``no_weight_decay`` or
    ``model.no_weight_decay()``); an iterable of tensors or param-group dicts is used as given.
    ``lr`` and ``weight_decay`` default to the class's own defaults; ``kwargs`` go to the
    constructor, over the name's registered defaults.
    """
    info = get_optimizer_info(name)
    if isinstance(model_or_params, nn.Module):
        params: Any = param_groups(
            model_or_params,
            weight_decay,
            no_weight_decay=no_weight_decay,
            exclude_bias_and_norm=exclude_bias_and_norm,
            lr=lr,
            layer_decay=layer_decay,
            layer_of=layer_of,
        )
    elif layer_decay is not None:
        raise ValueError("layer_decay needs a model (nn.Module), not a list of parameters")
    else:
        params = list(model_or_params)
    options = {**info.defaults, **kwargs}
    if lr is not None:
        options["lr"] = lr
    if weight_decay is not None:
        options["weight_decay"] = weight_decay
    optimizer = info.cls(params, **options)
    if lr is None:  # layer decay relative to the class's default learning rate
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
    return optimizer


_BUILTINS: list[tuple[str, OptimizerFactory, dict[str, Any], str]] = [
    ("sgd", torch.optim.SGD, {}, "torch.optim.SGD, plain"),
    ("sgdm", torch.optim.SGD, {"momentum": 0.9}, "torch.optim.SGD with momentum 0.9"),
    ("adamw", torch.optim.AdamW, {}, "torch.optim.AdamW"),
    ("lpsgd", LPSGD, {}, "l_p-norm steepest descent (sign(g)|g|^(1/(p-1)))"),
    ("lpsgdm", LPSGDM, {}, "l_p-norm steepest descent on an EMA momentum"),
    ("lion", Lion, {}, "Lion: sign of the interpolated momentum"),
    ("sepnorm", SepNorm, {}, "Lion with per-tensor RMS normalisation instead of sign"),
    ("ortsepnorm", OrtSepNorm, {}, "SepNorm on the update projected orthogonally to the weight"),
    ("normsgd", NormSGD, {}, "normalized gradient descent with momentum (one norm per group)"),
    ("signum", Signum, {}, "sign of an EMA momentum"),
    ("signsgd", Signum, {"momentum": 0.0}, "sign of the gradient (Signum without momentum)"),
    ("adan", Adan, {}, "Adan: adaptive Nesterov momentum"),
    ("adamw_agr", AdamWAGR, {}, "AdamW fed the AGR-regularised gradient"),
    ("adan_agr", AdanAGR, {}, "Adan fed the AGR-regularised gradient"),
]
for _entry in _BUILTINS:
    register_optimizer(*_entry)
del _entry
