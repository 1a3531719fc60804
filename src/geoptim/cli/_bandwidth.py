"""The bytes an optimizer step really moves, counted while it runs.

:func:`count_bytes` runs a function once and adds up the memory traffic of everything it
executes:

* every ATen operation (a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees each
  op the eager, multi-tensor and torch-fused paths run, reductions included): each tensor
  argument is read once, each tensor the op writes (a mutated argument, a fresh result) is
  written once, a tensor passed twice (``addcmul(v, g, g)``) counts once; an argument the op
  only overwrites (``copy_``, ``zero_``, ``out=``) is not read, and views, allocations and
  metadata ops move nothing;
* every call of geoptim's fused C kernels (:func:`geoptim._compiled.launch`, which ATen does
  not see): the loads and stores each kernel's loop makes, declared in :data:`KERNEL_ACCESS`
  (one entry per C kernel, read off :data:`geoptim._compiled.SOURCE`).

A tensor of ``n`` distinct elements (broadcast dimensions, of stride 0, count once) of ``b``
bytes each counts ``n b``: the traffic of a single pass over it, which is what a streaming
kernel moves once its data exceeds the caches. Anything the counter cannot see (a fused kernel
it has no declaration for) is listed in :attr:`ByteCount.unseen`, so a caller can mark the
count incomplete instead of reporting a figure that is too small.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

#: Each C kernel's tensor lists, in ``launch``'s order: ``"r"`` loaded, ``"w"`` stored,
#: ``"rw"`` both (every element once per call).
KERNEL_ACCESS: dict[str, tuple[str, ...]] = {
    "lion": ("rw", "r", "rw"),  # w, g, m
    "lion_sums": ("r", "r", "r"),  # g, m, w (w only for the orthogonal sums)
    "lion_scaled": ("rw", "r", "rw"),  # w, g, m
    "lp": ("rw", "r", "rw"),  # w, g, buf
    "adan": ("rw", "r", "rw", "rw", "rw", "rw"),  # w, g, m, d, n, g_prev
    "abs_sums": ("r",),  # g
    "agr": ("r", "w"),  # g, out
}

#: ATen fused optimizer kernels whose schema marks arguments as written that the kernel only
#: reads (the gradients: written only when a ``grad_scale`` unscales them in place).
_READ_ONLY_ARGUMENTS = {
    "_fused_adamw_": {"grads", "state_steps"},
    "_fused_adam_": {"grads", "state_steps"},
    "_fused_sgd_": {"grads"},
}

#: Ops that overwrite their mutated argument without reading it.
_OVERWRITE = {"copy_", "_foreach_copy_", "zero_", "_foreach_zero_", "fill_", "set_"}

#: Ops that allocate without touching memory.
_ALLOCATE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


@dataclass
class ByteCount:
    """Memory traffic of one run: bytes ``read`` and ``written``, ATen ``ops`` and C
    ``kernels`` executed, and the names of calls whose traffic could not be counted."""

    read: int = 0
    written: int = 0
    ops: int = 0
    kernels: int = 0
    unseen: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.read + self.written


def tensor_bytes(tensor: Tensor) -> int:
    """Bytes of the distinct elements of ``tensor`` (stride-0 dimensions count once)."""
    distinct = 1
    for size, stride in zip(tensor.shape, tensor.stride()):
        if stride != 0:
            distinct *= size
    return distinct * tensor.element_size() if tensor.numel() else 0


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, Tensor)]
    return []


def _identity(tensor: Tensor) -> tuple[Any, ...]:
    """The memory a tensor covers: one tensor passed twice to an op is read once."""
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride())


class _Counter(TorchDispatchMode):
    def __init__(self, count: ByteCount) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.count.ops += 1
        schema = func._schema
        name = schema.name.split("::")[-1]
        if name in _ALLOCATE or any(
            r.alias_info is not None and not r.alias_info.is_write for r in schema.returns
        ):
            return out  # allocation or view: no traffic
        read_only = _READ_ONLY_ARGUMENTS.get(name, set())
        reads: dict[tuple[Any, ...], int] = {}
        writes: dict[tuple[Any, ...], int] = {}
        for index, argument in enumerate(schema.arguments):
            if argument.name in kwargs:
                value = kwargs[argument.name]
            elif index < len(args) and not argument.kwarg_only:
                value = args[index]
            else:
                continue
            written = argument.alias_info is not None and argument.alias_info.is_write
            written = written and argument.name not in read_only
            overwritten = written and (name in _OVERWRITE or argument.name == "out")
            for tensor in _tensors(value):
                if not overwritten:
                    reads[_identity(tensor)] = tensor_bytes(tensor)
                if written:
                    writes[_identity(tensor)] = tensor_bytes(tensor)
        if not any(r.alias_info is not None for r in schema.returns):
            for tensor in _tensors(out):
                writes[_identity(tensor)] = tensor_bytes(tensor)
        self.count.read += sum(reads.values())
        self.count.written += sum(writes.values())
        return out


@contextlib.contextmanager
def _counting_kernels(count: ByteCount) -> Iterator[None]:
    """Count the traffic of every :func:`geoptim._compiled.launch` call, wherever a module
    bound the function."""
    from geoptim import _compiled

    original = _compiled.launch

    def launch(name: str, lists: Any, *args: Any, **kwargs: Any) -> None:
        access = KERNEL_ACCESS.get(name)
        count.kernels += 1
        if access is None or len(access) != len(lists):
            count.unseen.append(f"C kernel {name!r}")
        else:
            for mode, tensors in zip(access, lists):
                size = sum(tensor_bytes(t) for t in tensors or ())
                count.read += size if "r" in mode else 0
                count.written += size if "w" in mode else 0
        original(name, lists, *args, **kwargs)

    modules = [
        (module, attribute)
        for module in list(sys.modules.values())
        if getattr(module, "__name__", "").startswith("geoptim")
        for attribute, value in list(vars(module).items())
        if value is original
    ]
    for module, attribute in modules:
        setattr(module, attribute, launch)
    try:
        yield
    finally:
        for module, attribute in modules:
            setattr(module, attribute, original)


def count_bytes(fn: Callable[[], Any]) -> ByteCount:
    """The memory traffic of one call of ``fn`` (module docstring)."""
    count = ByteCount()
    with _counting_kernels(count), _Counter(count):
        fn()
    return count


class _Allocations(TorchDispatchMode):
    """Weak references to every tensor an ATen op creates (not a view, not an argument)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[weakref.ref[Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):
            self.created += [weakref.ref(t) for t in _tensors(out)]
        return out


def kept_bytes(fn: Callable[[], Any], owned: Callable[[], list[Tensor]]) -> int:
    """Bytes of the memory that ``fn`` allocates and still holds when it returns, beyond the
    tensors ``owned()`` lists afterwards (an optimizer's parameters, gradients and state): a
    workspace kept between steps. Each storage counts once, whole. Temporaries are freed by
    reference counting as ``fn`` returns (no ``gc.collect()``: with torch loaded it costs half a
    second; a temporary caught in a reference cycle would count as kept)."""
    allocations = _Allocations()
    with allocations:
        fn()
    exclude = {t.untyped_storage().data_ptr() for t in owned()}
    kept = {}
    for ref in allocations.created:
        tensor = ref()
        if tensor is not None and tensor.untyped_storage().data_ptr() not in exclude:
            storage = tensor.untyped_storage()
            kept[storage.data_ptr()] = storage.nbytes()
    return sum(kept.values())


__all__ = ["KERNEL_ACCESS", "ByteCount", "count_bytes", "kept_bytes", "tensor_bytes"]
