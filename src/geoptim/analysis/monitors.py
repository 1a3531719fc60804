"""Training-dynamics monitors: callbacks for :func:`geoptim.bench.training.train`.

Each monitor has ``on_step(step, model, optimizer, loss)`` (called after every optimizer step,
``step`` from 1, gradients of that step still in ``p.grad``) and/or ``on_epoch_end(epoch, model,
optimizer)``, and keeps what it measures in ``history`` (a dict of equally long lists, JSON-able).
``every`` records one step in ``every`` (step-based monitors).

* :class:`MomentumTracing`: parameters whose momentum was near zero before a step while that step
  brings them a non-zero gradient, split into BatchNorm biases and the rest.
* :class:`WeightQuantile`: a quantile (default 95%) of ``|w|`` over all parameters.
* :class:`UpdateCosine`: cosine between the largest weights and their updates.
* :class:`UpdateRMS`: ``||w_t - w_{t-1}|| / sqrt(n)`` per parameter tensor.
* :class:`WeightNorms`: per-tensor ``||w||`` against the SepNorm/OrtSepNorm fixed point
  :func:`fixed_point_norm`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

MOMENTUM_KEYS = ("exp_avg", "momentum_buffer")


def fixed_point_norm(lr: float, weight_decay: float, numel: int) -> float:
    """``||w||* = lr sqrt(n) / sqrt(2 lr wd - (lr wd)^2)``: the fixed point of
    ``||w_{t+1}||^2 = (1 - lr wd)^2 ||w_t||^2 + lr^2 n``, reached when every update is orthogonal
    to ``w`` with RMS 1 (OrtSepNorm always; SepNorm on scale-invariant weights). ``inf`` when
    ``lr * wd`` is 0 (or not in ``(0, 2)``)."""
    decay = lr * weight_decay
    if not 0.0 < decay < 2.0:
        return math.inf
    return lr * math.sqrt(numel) / math.sqrt(2 * decay - decay**2)


def batchnorm_bias_ids(model: nn.Module) -> set[int]:
    """``id`` of every BatchNorm module's bias."""
    return {
        id(module.bias)
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.bias is not None
    }


def _params(optimizer: torch.optim.Optimizer) -> Iterator[tuple[dict[str, Any], Tensor]]:
    for group in optimizer.param_groups:
        for p in group["params"]:
            yield group, p


class Monitor:
    """Base: a ``history`` of lists and the ``every``-step filter."""

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.history: dict[str, list[Any]] = {}

    def _due(self, step: int) -> bool:
        return step % self.every == 0

    def _add(self, **values: Any) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)


class MomentumTracing(Monitor):
    """Counts, per step ``t``, the parameters (elements) with ``|m_{t-1}| < threshold`` and
    ``g_t != 0``: their momentum had decayed to nothing while the gradient was absent (e.g. a
    BatchNorm bias in front of a ReLU that is dead on the whole batch) and the gradient now
    returns. Under Lion the weight kept moving by ``lr * sign(m)`` in the meantime ("momentum
    tracing", SepNorm paper, figure 2).

    With ``after_zero_gradient`` (default) only parameters whose gradient was exactly zero at
    step ``t - 1`` count: this leaves out momenta that merely cross zero while the gradient
    changes sign, which a fixed threshold would otherwise catch at a rate proportional to it.

    ``m`` is ``optimizer.state[p][state_key]``; by default the first of ``exp_avg`` (Lion,
    SepNorm, Adan, Adam) and ``momentum_buffer`` (SGD, LPSGDM) present. Step 1 has no previous
    momentum and records nothing. History: ``step``, ``bn_bias`` and ``other`` (the counts), and
    ``bn_bias_dormant`` and ``other_dormant`` (parameters that would count if their gradient
    returned at the next step). The threshold is absolute; scale it with the model's gradients.
    On the digits ResNet (Lion, lr 1e-2, batch 16, 12 epochs) thresholds ``1e-2`` and ``1e-3``
    (the default) count 465 and 456 BatchNorm-bias events, ``1e-4`` counts 230.
    """

    def __init__(
        self,
        threshold: float = 1e-3,
        state_key: str | None = None,
        after_zero_gradient: bool = True,
        every: int = 1,
    ) -> None:
        super().__init__(every)
        self.threshold = threshold
        self.state_key = state_key
        self.after_zero_gradient = after_zero_gradient
        self._dormant: dict[int, Tensor] = {}
        self._bn_bias: set[int] | None = None

    def _momentum(self, state: dict[str, Any]) -> Tensor | None:
        keys = (self.state_key,) if self.state_key else MOMENTUM_KEYS
        for key in keys:
            if isinstance(state.get(key), Tensor):
                return state[key]
        return None

    def on_step(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, loss: float
    ) -> None:
        if self._bn_bias is None:
            self._bn_bias = batchnorm_bias_ids(model)
        counts = {"bn_bias": 0, "other": 0, "bn_bias_dormant": 0, "other_dormant": 0}
        seen = False
        for _, p in _params(optimizer):
            kind = "bn_bias" if id(p) in self._bn_bias else "other"
            previous = self._dormant.get(id(p))
            if previous is not None and p.grad is not None:
                counts[kind] += int((previous & (p.grad != 0)).sum())
                seen = True
            momentum = self._momentum(optimizer.state.get(p, {}))
            if momentum is not None:
                dormant = momentum.abs() < self.threshold
                if self.after_zero_gradient:
                    dormant &= p.grad == 0 if p.grad is not None else True
                self._dormant[id(p)] = dormant
                counts[f"{kind}_dormant"] += int(dormant.sum())
        if seen and self._due(step):
            self._add(step=step, **counts)


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


class WeightQuantile(Monitor):
    """The ``q``-quantile of ``|w|`` over all trainable parameters after the step (linear
    interpolation between order statistics, as ``numpy.quantile``). History: ``step``,
    ``quantile``, ``max``. Under Lion with weight decay ``wd``, weights without gradient drift
    to ``|w| = 1 / wd``."""

    def __init__(self, q: float = 0.95, every: int = 1) -> None:
        super().__init__(every)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must lie in [0, 1], got {q}")
        self.q = q

    def on_step(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, loss: float
    ) -> None:
        if self._due(step):
            values = _flat(model).abs()
            self._add(step=step, quantile=quantile(values, self.q), max=float(values.max()))


def quantile(values: Tensor, q: float) -> float:
    """``numpy.quantile(values, q)`` (linear method) for a 1-D tensor of any size."""
    n = values.numel()
    position = q * (n - 1)
    lo, hi = math.floor(position), math.ceil(position)
    low = values.kthvalue(lo + 1).values
    high = values.kthvalue(hi + 1).values if hi != lo else low
    return float(low + (position - lo) * (high - low))


class _UpdateMonitor(Monitor):
    """Keeps the weights of the previous step; ``measure`` sees ``w_{t-1}`` and ``w_t``."""

    def __init__(self, every: int = 1) -> None:
        super().__init__(every)
        self._previous: list[Tensor] | None = None

    def on_step(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, loss: float
    ) -> None:
        named = [(name, p.detach()) for name, p in model.named_parameters() if p.requires_grad]
        previous, self._previous = self._previous, [p.clone() for _, p in named]
        if previous is not None and self._due(step):
            names = [name for name, _ in named]
            self.measure(step, names, previous, [p for _, p in named])

    def measure(
        self, step: int, names: Sequence[str], before: Sequence[Tensor], after: Sequence[Tensor]
    ) -> None:
        raise NotImplementedError


class UpdateCosine(_UpdateMonitor):
    """``cos(w_S, u_S)`` with ``u = w_t - w_{t-1}`` and ``S`` the ``fraction`` (default 5%) of
    entries with the largest ``|w_{t-1}|`` over all parameters. Near ``+1``: the largest weights
    keep growing along themselves (Lion drifting to ``1 / wd``); near ``-1``: decay dominates.
    History: ``step``, ``cosine``."""

    def __init__(self, fraction: float = 0.05, every: int = 1) -> None:
        super().__init__(every)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        self.fraction = fraction

    def measure(
        self, step: int, names: Sequence[str], before: Sequence[Tensor], after: Sequence[Tensor]
    ) -> None:
        w = torch.cat([b.reshape(-1) for b in before])
        update = torch.cat([a.reshape(-1) for a in after]) - w
        k = max(1, round(self.fraction * w.numel()))
        index = w.abs().topk(k).indices
        cosine = torch.nn.functional.cosine_similarity(w[index], update[index], dim=0, eps=1e-30)
        self._add(step=step, cosine=float(cosine))


class UpdateRMS(_UpdateMonitor):
    """``rms(w_t - w_{t-1}) = ||w_t - w_{t-1}|| / sqrt(n)`` per parameter tensor. History:
    ``step`` and one list per parameter name."""

    def measure(
        self, step: int, names: Sequence[str], before: Sequence[Tensor], after: Sequence[Tensor]
    ) -> None:
        rms = {
            name: float((a - b).float().pow(2).mean().sqrt())
            for name, b, a in zip(names, before, after, strict=True)
        }
        self._add(step=step, **rms)


class WeightNorms(Monitor):
    """Per tensor, ``||w||`` and :func:`fixed_point_norm` of its group's current ``lr`` and
    ``weight_decay``, at every epoch end (and every ``every_steps`` steps if given). History:
    ``epoch`` and ``step`` (``None`` for the other kind), and per name ``{name}`` and
    ``{name}:fixed_point`` (``None`` when the group has no weight decay)."""

    def __init__(self, every_steps: int | None = None) -> None:
        super().__init__(every_steps or 1)
        self.every_steps = every_steps
        self._names: dict[int, str] | None = None

    def _record(self, model: nn.Module, optimizer: torch.optim.Optimizer, **when: Any) -> None:
        if self._names is None:
            self._names = {id(p): name for name, p in model.named_parameters()}
        values: dict[str, Any] = {}
        for group, p in _params(optimizer):
            name = self._names.get(id(p))
            if name is None:
                continue
            star = fixed_point_norm(group["lr"], group.get("weight_decay", 0.0), p.numel())
            values[name] = float(p.detach().norm())
            values[f"{name}:fixed_point"] = None if math.isinf(star) else star
        self._add(**when, **values)

    def on_step(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, loss: float
    ) -> None:
        if self.every_steps is not None and self._due(step):
            self._record(model, optimizer, epoch=None, step=step)

    def on_epoch_end(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._record(model, optimizer, epoch=epoch, step=None)
