"""Per-tensor statistics: the one place where geoptim reduces a whole tensor to a number.

SepNorm, OrtSepNorm, NormSGD and AGR need, per parameter tensor, a sum over *all* of its
elements: ``sum(x**2)``, ``sum(|x|)`` or ``sum(x*y)``, and its element count. Every such reduction
goes through :func:`per_tensor_sums` (or, for sums a fused kernel computed while reading the
data, :func:`reduce_partial_sums`) and :func:`global_numels`, which is where sharded parameters
are supported.

Sharded parameters (FSDP2 ``fully_shard``, HSDP, any ``DTensor`` with ``Shard`` placements) hold
only part of each tensor on a rank. The optimizers hand their kernels the *local* shards and, for
the duration of the update, declare with :func:`sharded` how each local tensor sits in its whole
tensor (a :class:`Sharding`, positionally: the i-th tensor of every list a kernel passes here is
the i-th present parameter's shard, or a tensor derived from it element-wise). Local partial sums
are then all-reduced with one collective per bucket of tensors sharing a device mesh and sharded
mesh dimension, over only the mesh dimensions on which the tensors are sharded (replicated
dimensions, as in HSDP, already hold the whole sum). Plain tensors need no communication, and
without :func:`sharded` nothing here communicates.

Ranks may differ in which parameters have a gradient (``p.grad = None`` on some ranks only), so
the declaration covers *every* parameter of the group and says which ones this rank passes. Each
reduction carries one row per declared sharded parameter, ``(partial sum, 1 if passed else 0)``,
in float64: the all-reduced shapes match on every rank whatever the gradients (no hang), and the
summed presence column, which must be 0 or the number of ranks, shows a mismatch to every rank
at once; each then raises the same :class:`GradientPresenceError`. The check costs no
collective of its own.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class Declaration:
    """What :func:`sharded` declares: the layout of every parameter (``layouts``), the indices of
    those whose tensors the kernels pass, in order (``passed``), and how errors name each one
    (``labels``)."""

    layouts: tuple[Layout, ...]
    passed: tuple[int, ...]
    labels: tuple[str, ...]


class GradientPresenceError(RuntimeError):
    """Ranks differ in which sharded parameters have a gradient."""


_DECLARED: ContextVar[Declaration | None] = ContextVar("geoptim_declared", default=None)

#: Set by :func:`whole_tensors`: a module global (not a context variable) so that
#: ``torch.compile`` can trace the statistics, guarding on its value.
_WHOLE_TENSORS = False


@contextmanager
def whole_tensors() -> Iterator[None]:
    """Within this block, code that ``torch.compile`` traces passes only plain tensors, whole on
    this rank (no declaration, no DTensor): the statistics are plain torch ops, traced into the
    graph (:mod:`geoptim._gpu` compiles the references inside one; :func:`geoptim._base.eager`
    functions are then traced too). Eager code, in this thread or another, is unaffected."""
    global _WHOLE_TENSORS
    previous, _WHOLE_TENSORS = _WHOLE_TENSORS, True
    try:
        yield
    finally:
        _WHOLE_TENSORS = previous


def tracing_whole_tensors() -> bool:
    """Whether :func:`whole_tensors` is in effect."""
    return _WHOLE_TENSORS


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


def layouts_of(tensors: Sequence[Tensor]) -> list[Layout]:
    """:func:`layout_of` of each tensor; all ``None`` without asking each one when neither
    DTensor nor FSDP is loaded (a plain model's step pays nothing for sharding support)."""
    if dtensor_type() is None and "torch.distributed.fsdp" not in sys.modules:
        return [None] * len(tensors)
    return [layout_of(t) for t in tensors]


def parameter_labels(group: dict[str, Any], prefix: str = "") -> list[str]:
    """``"<prefix>parameter <i>"`` for each parameter of a param group, with its name where the
    group has ``param_names`` (an optimizer built from ``named_parameters()``)."""
    names = group.get("param_names")
    return [
        f"{prefix}parameter {i}" + (f" ({names[i]!r})" if names else "")
        for i in range(len(group["params"]))
    ]


@contextmanager
def sharded(
    layouts: Sequence[Layout],
    present: Sequence[bool] | None = None,
    labels: Sequence[str] | None = None,
) -> Iterator[None]:
    """Within this block, the lists passed to :func:`per_tensor_sums` and :func:`global_numels`
    are local shards of parameters laid out as ``layouts`` (one per parameter, on every rank the
    same), of those marked ``present`` (default: all), in order. ``labels`` name the parameters
    in errors (default ``"parameter <i>"``). All layouts ``None``: whole tensors, the same as
    outside any block."""
    declaration = None
    if any(layouts):
        passed = range(len(layouts)) if present is None else [i for i, p in enumerate(present) if p]
        names = labels or [f"parameter {i}" for i in range(len(layouts))]
        declaration = Declaration(tuple(layouts), tuple(passed), tuple(names))
    token = _DECLARED.set(declaration)
    try:
        yield
    finally:
        _DECLARED.reset(token)


def _declaration_for(tensors: Sequence[Tensor]) -> Declaration | None:
    """How ``tensors`` sit in their parameters, or ``None`` when every tensor is whole on this
    rank: the declared :func:`sharded` block, else (DTensors passed outside one) their own
    layouts, every tensor present. The lists must match the declaration."""
    if _WHOLE_TENSORS and torch.compiler.is_compiling():  # eager code elsewhere: unaffected
        return None
    declaration = _DECLARED.get()
    if declaration is None:
        dtensor = dtensor_type()
        if dtensor is None or not any(isinstance(t, dtensor) for t in tensors):
            return None
        layouts = tuple(layout_of(t) for t in tensors)
        labels = tuple(f"tensor {i}" for i in range(len(tensors)))
        declaration = Declaration(layouts, tuple(range(len(tensors))), labels)
    if any(isinstance(lay, Flattened) for lay in declaration.layouts):
        raise RuntimeError(FSDP1_MESSAGE)
    passed = [declaration.layouts[i] for i in declaration.passed]
    if len(passed) != len(tensors) or any(
        isinstance(lay, Sharding) and lay.local_shape != local(t).shape
        for lay, t in zip(passed, tensors)
    ):
        raise RuntimeError(
            "per-tensor statistics of sharded parameters: the tensors do not match the "
            f"parameter shards declared for this step ({len(tensors)} tensors, "
            f"{len(passed)} shards); a kernel must pass every parameter's tensor, in order"
        )
    return declaration


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


def local_sums(kind: SumKind, tensors: Sequence[Tensor], others: Sequence[Tensor] | None) -> Tensor:
    """The sums over this rank's elements, stacked (float32 at least), not yet completed over the
    ranks (that is :func:`reduce_partial_sums`)."""
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


def _all_reduce_shards(sums: Tensor, declaration: Declaration) -> Tensor:
    """Sum each sharded tensor's partial sums (a row of ``sums``, or one value when ``sums`` is
    1-D) over the ranks holding its shards: one all-reduce per (mesh, sharded mesh dimension)
    bucket, of a row ``(partial sums, presence)`` per declared parameter of the bucket (passed
    or not, so every rank reduces the same shape), in float64. Raises
    :class:`GradientPresenceError` on every rank when some parameter is passed on some ranks
    only."""
    import torch.distributed as dist

    buckets: dict[tuple[Any, tuple[int, ...]], list[int]] = {}
    for i, lay in enumerate(declaration.layouts):
        if isinstance(lay, Sharding):
            buckets.setdefault((lay.mesh, lay.dims), []).append(i)
    device = sums.device if len(sums) else torch.device(next(iter(buckets))[0].device_type)
    columns = sums.shape[1] if sums.dim() > 1 else 1
    rows = torch.zeros(len(declaration.layouts), columns + 1, dtype=torch.float64, device=device)
    passed = torch.tensor(declaration.passed, dtype=torch.long, device=device)
    rows[passed, :columns] = sums.reshape(len(passed), columns).to(rows)
    rows[passed, columns] = 1.0
    mismatched: list[tuple[int, int, int]] = []
    for (mesh, dims), indices in buckets.items():
        index = torch.tensor(indices, device=device)
        partial = rows.index_select(0, index)
        for dim in dims:  # FSDP2 and HSDP shard along one mesh dimension: one collective
            dist.all_reduce(partial, group=mesh.get_group(dim))
        rows.index_copy_(0, index, partial)
        ranks = math.prod(mesh.size(dim) for dim in dims)
        counts = partial[:, columns].tolist()
        mismatched += [(i, int(c), ranks) for i, c in zip(indices, counts) if 0 < c < ranks]
    if mismatched:
        raise GradientPresenceError(_presence_message(declaration.labels, mismatched))
    return rows[passed, :columns].reshape(sums.shape).to(sums.dtype)


def _presence_message(labels: Sequence[str], mismatched: Sequence[tuple[int, int, int]]) -> str:
    listed = "; ".join(
        f"{labels[i]} has a gradient on {count} of {ranks} ranks" for i, count, ranks in mismatched
    )
    return (
        f"ranks differ in which parameters have a gradient: {listed}. The statistics of "
        "sharded parameters are reduced across ranks, so every rank must have a gradient for the "
        "same parameters: zero the gradients instead of setting them to None "
        "(`optimizer.zero_grad(set_to_none=False)`), or make the same `set_to_none` choice on "
        "every rank"
    )


def per_tensor_sums(
    kind: SumKind, tensors: Sequence[Tensor], others: Sequence[Tensor] | None = None
) -> Tensor:
    """One sum per tensor, stacked into a 1-D tensor (float32 at least).

    ``kind``: ``"sumsq"`` is ``sum(x_i**2)``, ``"abs"`` is ``sum(|x_i|)``, ``"dot"`` is
    ``sum(x_i * y_i)`` with ``y`` from ``others``. Empty tensors give 0. The result lives on the
    device of the first tensor. Sums of sharded tensors (DTensors, or local shards declared with
    :func:`sharded`) are over the whole tensor, identical on every rank; inside a declaration,
    an empty list still takes part in the reduction (other ranks may pass tensors).
    """
    declaration = _declaration_for(tensors)
    if declaration is not None:
        tensors = [local(t) for t in tensors]
        others = None if others is None else [local(o) for o in others]
    sums = local_sums(kind, tensors, others) if tensors else torch.zeros(0)
    return sums if declaration is None else _all_reduce_shards(sums, declaration)


def reduce_partial_sums(tensors: Sequence[Tensor], partial: Tensor) -> Tensor:
    """Sums that a kernel computed over this rank's elements of ``tensors`` while reading them
    (``partial``: one row, or one value, per tensor), completed as :func:`per_tensor_sums`
    completes its own: over the whole tensor for sharded ones, unchanged for the others."""
    declaration = _declaration_for(tensors)
    return partial if declaration is None else _all_reduce_shards(partial, declaration)


def global_numels(tensors: Sequence[Tensor]) -> list[int]:
    """Each tensor's element count; for a sharded tensor, that of the whole tensor."""
    declaration = _declaration_for(tensors)
    if declaration is None:
        return [t.numel() for t in tensors]
    layouts = [declaration.layouts[i] for i in declaration.passed]
    return [
        lay.numel if isinstance(lay, Sharding) else t.numel() for lay, t in zip(layouts, tensors)
    ]
