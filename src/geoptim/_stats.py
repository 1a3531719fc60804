"""Per-tensor statistics: the one place where geoptim reduces a whole tensor to a number.

SepNorm, OrtSepNorm, NormSGD and AGR need, per parameter tensor, a sum over *all* of its
elements: ``sum(x**2)``, ``sum(|x|)`` or ``sum(x*y)``. Every such reduction goes through
:func:`per_tensor_sums`, so that sharded parameters (whose local data is only part of the tensor)
can be supported in this one function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

SumKind = Literal["sumsq", "abs", "dot"]


def accumulation_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (never narrower)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def per_tensor_sums(
    kind: SumKind, tensors: Sequence[Tensor], others: Sequence[Tensor] | None = None
) -> Tensor:
    """One sum per tensor, stacked into a 1-D tensor (float32 at least).

    ``kind``: ``"sumsq"`` is ``sum(x_i**2)``, ``"abs"`` is ``sum(|x_i|)``, ``"dot"`` is
    ``sum(x_i * y_i)`` with ``y`` from ``others``. Empty tensors give 0. The result lives on the
    device of the first tensor.
    """
    if not tensors:
        return torch.zeros(0)
    dtype = accumulation_dtype(tensors)
    device = tensors[0].device
    if kind == "sumsq":
        sums = torch.stack(torch._foreach_norm(list(tensors), 2, dtype=dtype)).square_()
    elif kind == "abs":
        sums = torch.stack(torch._foreach_norm(list(tensors), 1, dtype=dtype))
    elif kind == "dot":
        if others is None or len(others) != len(tensors):
            raise ValueError("per_tensor_sums('dot', ...) needs one `others` tensor per tensor")
        sums = torch.stack(
            [
                torch.dot(x.reshape(-1).to(dtype), y.reshape(-1).to(dtype)).to(device)
                for x, y in zip(tensors, others)
            ]
        )
    else:
        raise ValueError(f"kind must be 'sumsq', 'abs' or 'dot', got {kind!r}")
    return sums.to(device)
