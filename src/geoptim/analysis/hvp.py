"""Hessian-vector products of a model's loss, on a flat parameter vector.

For a model with parameters ``w`` (all tensors with ``requires_grad``, flattened and concatenated
in ``named_parameters`` order into one vector of length ``n``) and data split into batches ``b``
of sizes ``n_b``, the loss is the batch-size-weighted average

    L(w) = sum_b n_b * loss_fn(f(x_b; w), y_b) / sum_b n_b,

which equals the loss on the concatenated batch when ``loss_fn`` averages over the batch. Its
Hessian ``H = d^2 L / dw^2`` is never formed; :class:`HessianOperator` applies it to vectors:

* ``method="reverse"`` (default): reverse-over-reverse, ``H v = v^T d(grad L)/dw`` (``H`` is
  symmetric). The gradient's graph is built once per batch by ``torch.func.vjp(grad(L), w)``
  and every product is one backward pass through it; memory holds those graphs for all batches.
* ``method="forward"``: forward-over-reverse, ``H v = d/de grad L(w + e v) |_{e=0}``, i.e.
  ``torch.func.jvp(torch.func.grad(L), (w,), (v,))``. Each product is one forward pass and one
  backward pass carrying tangents; nothing is kept between products, so memory stays at about
  twice a training step's, whatever the number of batches.

On CPU (``benchmarks/hessian_speed.py``, a 1.1M-parameter BatchNorm MLP), a cached reverse
product costs about half a forward-over-reverse one, which costs the same as a double backward
that rebuilds the gradient graph; forward-over-reverse pays when the batches' graphs do not fit
in memory.

Train/eval mode is the caller's choice and is not changed here: in ``eval()`` mode BatchNorm
uses its running statistics (read, never written); in ``train()`` mode it normalises with the
batch statistics, the Hessian is that of the training-mode loss, and the running statistics are
left untouched (they are passed as ``None`` to the functional call). The model itself is never
modified: the loss is evaluated with :func:`torch.func.functional_call` on a flat copy of its
parameters and detached buffers. Attention runs on PyTorch's composite ("math") kernel, the one
``scaled_dot_product_attention`` backend whose backward is itself differentiable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

LossFn = Callable[[Any, Any], Tensor]
Batch = tuple[Any, Any]
Data = Batch | Iterable[Batch]

METHODS = ("forward", "reverse")


def as_batches(data: Data) -> list[Batch]:
    """One ``(inputs, targets)`` batch or an iterable of them, as a list of batches."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return [data]
    batches = [tuple(batch) for batch in data]
    if not batches:
        raise ValueError("data holds no batch")
    if any(len(batch) != 2 for batch in batches):
        raise ValueError("each batch must be an (inputs, targets) pair")
    return batches  # type: ignore[return-value]


def _batch_size(batch: Batch) -> int:
    targets = batch[1]
    return int(targets.shape[0]) if isinstance(targets, Tensor) else len(targets)


def _cast(value: Any, dtype: torch.dtype | None) -> Any:
    if dtype is not None and isinstance(value, Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _frozen_buffers(model: nn.Module, dtype: torch.dtype | None) -> dict[str, Tensor | None]:
    """The model's buffers for the functional call: BatchNorm running statistics of modules in
    training mode become ``None`` (so nothing is written to them), the rest are cast copies."""
    skip: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            dot = f"{prefix}." if prefix else ""
            skip.update(f"{dot}{name}" for name, _ in module.named_buffers(recurse=False))
    return {
        name: None if name in skip else _cast(buf.detach(), dtype)
        for name, buf in model.named_buffers()
    }


class HessianOperator:
    """The Hessian of ``loss_fn`` averaged over ``data``, at the model's current parameters.

    Attributes: ``params`` (the flat parameter vector, detached, in ``dtype``), ``size`` (``n``),
    ``names`` and ``shapes`` (the layout of ``params``), ``n_products`` (products so far).
    ``dtype=torch.float64`` evaluates everything in double precision (for tests and checks).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Data,
        *,
        dtype: torch.dtype | None = None,
        method: str = "reverse",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no parameter that requires a gradient")
        self.model = model
        self.loss_fn = loss_fn
        self.method = method
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self._numels = [p.numel() for _, p in named]
        self._fixed = {
            name: _cast(p.detach(), dtype)
            for name, p in model.named_parameters()
            if not p.requires_grad
        }
        self._buffers = _frozen_buffers(model, dtype)
        self.params = torch.cat([_cast(p.detach(), dtype).reshape(-1) for _, p in named])
        batches = as_batches(data)
        total = sum(_batch_size(batch) for batch in batches)
        self._batches = [(_cast(x, dtype), y, _batch_size((x, y)) / total) for x, y in batches]
        self._linear: list[Callable[[Tensor], tuple[Tensor]]] | None = None
        self.n_products = 0

    @property
    def size(self) -> int:
        return self.params.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.params.dtype

    @property
    def device(self) -> torch.device:
        return self.params.device

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """The flat vector as a ``{name: tensor}`` dict shaped like the parameters."""
        pieces = torch.split(flat, self._numels)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def _batch_loss(self, flat: Tensor, inputs: Any, targets: Any) -> Tensor:
        tensors = {**self._fixed, **self.unflatten(flat)}
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
            outputs = functional_call(self.model, (tensors, self._buffers), (inputs,))
        return self.loss_fn(outputs, targets)

    def _gradient_fn(self, inputs: Any, targets: Any) -> Callable[[Tensor], Tensor]:
        return lambda flat: grad(self._batch_loss)(flat, inputs, targets)

    def matvec(self, vector: Tensor) -> Tensor:
        """``H v`` for a flat vector ``v`` of length ``size``."""
        if vector.shape != self.params.shape:
            raise ValueError(f"expected a vector of shape {tuple(self.params.shape)}")
        vector = vector.to(dtype=self.dtype, device=self.device)
        self.n_products += 1
        if self.method == "forward":
            return sum(
                weight * jvp(self._gradient_fn(x, y), (self.params,), (vector,))[1]
                for x, y, weight in self._batches
            )  # type: ignore[return-value]
        if self._linear is None:
            self._linear = [
                vjp(self._gradient_fn(x, y), self.params)[1] for x, y, _ in self._batches
            ]
        return sum(
            weight * linear(vector)[0]
            for linear, (_, _, weight) in zip(self._linear, self._batches, strict=True)
        )  # type: ignore[return-value]
