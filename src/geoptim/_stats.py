"""Per-tensor statistics: the one place where geoptim reduces a whole tensor to a number.

SepNorm, OrtSepNorm, NormSGD and AGR need, per parameter tensor, a sum over *all* of its
elements: ``sum(x**2)``, ``sum(|x|)`` or ``sum(x*y)``, and its element count. Every such reduction
goes through :func:`per_tensor_sums` and :func:`global_numels`, which is where sharded parameters
are supported.

Sharded parameters (FSDP2 ``fully_shard``, HSDP, any ``DTensor`` with ``Shard`` placements) hold
only part of each tensor on a rank. The optimizers hand their kernels the *local* shards and, for
the duration of the update, declare with :func:`sharded` how each local tensor sits in its whole
tensor (a :class:`Sharding`, positionally: the i-th tensor of every list a kernel passes here is
the i-th parameter's shard, or a tensor derived from it element-wise). Local float32 (or float64)
partial sums are then stacked and all-reduced with one collective per bucket of tensors sharing
a device mesh and sharded mesh dimension, over only the mesh dimensions on which the tensors are
sharded (replicated dimensions, as in HSDP, already hold the whole sum). Plain tensors need no
communication, and without :func:`sharded` nothing here communicates.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

SumKind = Literal["sumsq", "abs", "dot"]

FSDP1_MESSAGE = (
    "geoptim cannot compute per-tensor norms and sums of FSDP1 parameters: FSDP1 "
    "(FullyShardedDataParallel) flattens and shards them, so no rank sees a whole tensor. Shard "
    "the model with FSDP2 instead, `torch.distributed.fsdp.fully_shard(module)`, whose DTensor "
    "parameters geoptim supports (see docs/distributed.md)."
)


@dataclass(frozen=True)
class Sharding:
    """Where a local tensor sits in its whole tensor.

    ``mesh`` is the ``DeviceMesh``, ``dims`` the mesh dimensions along which the tensor is
    sharded (reduced over), ``numel`` the whole tensor's element count, ``local_shape`` the shape
    of this rank's shard (checked against the tensors a kernel passes).
    """

    mesh: Any
    dims: tuple[int, ...]
    numel: int
    local_shape: torch.Size


class Flattened:
    """Marks an FSDP1 flattened parameter, whose per-tensor statistics cannot be computed."""


FLATTENED = Flattened()

Layout = Sharding | Flattened | None

_LAYOUTS: ContextVar[tuple[Layout, ...] | None] = ContextVar("geoptim_layouts", default=None)


def dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor`` if that module is loaded, else ``None``.

    (A DTensor cannot exist before its module is imported, and importing it costs seconds.)
    """
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_dtensor(tensor: Any) -> bool:
    cls = dtensor_type()
    return cls is not None and isinstance(tensor, cls)


def layout_of(tensor: Tensor) -> Layout:
    """The :class:`Sharding` of a DTensor with a ``Shard`` placement, :data:`FLATTENED` for an
    FSDP1 flattened parameter, ``None`` for a tensor that is whole on this rank."""
    if getattr(tensor, "_fsdp_flattened", False):  # set by FSDP1
        return FLATTENED
    if not is_dtensor(tensor):
        return None
    placements = tensor.placements  # type: ignore[attr-defined]
    if any(p.is_partial() for p in placements):
        raise ValueError(
            "geoptim cannot use a DTensor parameter or gradient with a Partial placement "
            f"({placements}); redistribute it to Shard or Replicate placements first"
        )
    dims = tuple(i for i, p in enumerate(placements) if p.is_shard())
    if not dims:
        return None
    mesh = tensor.device_mesh  # type: ignore[attr-defined]
    return Sharding(mesh, dims, tensor.numel(), local(tensor).shape)


@contextmanager
def sharded(layouts: Sequence[Layout]) -> Iterator[None]:
    """Within this block, the lists passed to :func:`per_tensor_sums` and :func:`global_numels`
    are the local shards described by ``layouts``, position by position (all ``None``: whole
    tensors, the same as outside any block)."""
    token = _LAYOUTS.set(tuple(layouts) if any(layouts) else None)
    try:
        yield
    finally:
        _LAYOUTS.reset(token)


def _layouts_for(tensors: Sequence[Tensor]) -> tuple[Layout, ...] | None:
    """The layout of each tensor, or ``None`` when every tensor is whole on this rank.

    DTensors carry their own layout; plain tensors inside a :func:`sharded` block get the
    declared ones (the lists must match).
    """
    dtensor = dtensor_type()
    if dtensor is not None and any(isinstance(t, dtensor) for t in tensors):
        return tuple(layout_of(t) for t in tensors)
    layouts = _LAYOUTS.get()
    if layouts is None:
        return None
    if any(isinstance(lay, Flattened) for lay in layouts):
        raise RuntimeError(FSDP1_MESSAGE)
    if len(layouts) != len(tensors) or any(
        isinstance(lay, Sharding) and lay.local_shape != t.shape for lay, t in zip(layouts, tensors)
    ):
        raise RuntimeError(
            "per-tensor statistics of sharded parameters: the tensors do not match the "
            f"parameter shards declared for this step ({len(tensors)} tensors, "
            f"{len(layouts)} shards); a kernel must pass every parameter's tensor, in order"
        )
    return layouts


def local(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor (sharing its storage); any other tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


def like(reference: Tensor, shard: Tensor) -> Tensor:
    """``shard`` as a DTensor laid out like the DTensor ``reference``; ``shard`` itself when
    ``reference`` is a plain tensor."""
    if not is_dtensor(reference):
        return shard
    return type(reference).from_local(  # type: ignore[attr-defined]
        shard,
        reference.device_mesh,  # type: ignore[attr-defined]
        reference.placements,  # type: ignore[attr-defined]
        run_check=False,
        shape=reference.shape,
        stride=reference.stride(),
    )


def accumulation_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (never narrower)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _local_sums(
    kind: SumKind, tensors: Sequence[Tensor], others: Sequence[Tensor] | None
) -> Tensor:
    """The sums over this rank's elements, stacked (float32 at least)."""
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


def _all_reduce_shards(sums: Tensor, layouts: Sequence[Layout]) -> Tensor:
    """Sum each sharded tensor's partial sum over the ranks holding its shards: one
    all-reduce per (mesh, sharded mesh dimension) bucket."""
    import torch.distributed as dist

    buckets: dict[tuple[Any, tuple[int, ...]], list[int]] = {}
    for i, lay in enumerate(layouts):
        if isinstance(lay, Sharding):
            buckets.setdefault((lay.mesh, lay.dims), []).append(i)
    for (mesh, dims), indices in buckets.items():
        index = torch.tensor(indices, device=sums.device)
        partial = sums.index_select(0, index)
        for dim in dims:  # FSDP2 and HSDP shard along one mesh dimension: one collective
            dist.all_reduce(partial, group=mesh.get_group(dim))
        sums = sums.index_copy(0, index, partial)
    return sums


def per_tensor_sums(
    kind: SumKind, tensors: Sequence[Tensor], others: Sequence[Tensor] | None = None
) -> Tensor:
    """One sum per tensor, stacked into a 1-D tensor (float32 at least).

    ``kind``: ``"sumsq"`` is ``sum(x_i**2)``, ``"abs"`` is ``sum(|x_i|)``, ``"dot"`` is
    ``sum(x_i * y_i)`` with ``y`` from ``others``. Empty tensors give 0. The result lives on the
    device of the first tensor. Sums of sharded tensors (DTensors, or local shards declared with
    :func:`sharded`) are over the whole tensor, identical on every rank.
    """
    if not tensors:
        return torch.zeros(0)
    layouts = _layouts_for(tensors)
    if layouts is None:
        return _local_sums(kind, tensors, others)
    tensors = [local(t) for t in tensors]
    others = None if others is None else [local(o) for o in others]
    return _all_reduce_shards(_local_sums(kind, tensors, others), layouts)


def global_numels(tensors: Sequence[Tensor]) -> list[int]:
    """Each tensor's element count; for a sharded tensor, that of the whole tensor."""
    layouts = _layouts_for(tensors) or (None,) * len(tensors)
    return [
        lay.numel if isinstance(lay, Sharding) else t.numel() for lay, t in zip(layouts, tensors)
    ]
