r"""The fused path for CUDA tensors: each optimizer's single-tensor reference, compiled.

The C kernels of :mod:`geoptim._compiled` are CPU-only. On a GPU the fused path is instead
``torch.compile(reference, fullgraph=True, dynamic=False)`` of the very function that specifies
the update (``sepnorm_single``, ``lpsgdm_single``, ``adan_single``, ``agr_each``), applied to the
whole group's tensor lists: inductor fuses the per-tensor loop into a few kernels (a 16-bit
parameter's float32 working copy and its write-back become loads and stores of one kernel), so
the math is written once, in the reference, for both.

What may change every step enters the compiled function as a 0-dimensional float64 tensor on the
parameters' device (``lr``, LPSGDM's ``p`` under :class:`geoptim.CosinePScheduler`, Adan's step
counts), so a scheduler does not recompile it. The other hyperparameters are Python numbers
that ``torch.compile`` specialises on: changing one (or the group's shapes) compiles once more.
Per-tensor statistics go through :mod:`geoptim._stats` as everywhere, traced inside
:func:`geoptim._stats.whole_tensors` (plain tensors, no sharding: sharded groups never take this
path).

Used for CUDA tensors (:data:`DEVICES`) where the fused path is chosen
(:func:`geoptim._compiled.kernel_mode`). If compiling fails, the multi-tensor path takes over,
with one warning per reference. Inside a ``torch.compile`` of the user's own step, the step is
left to that compilation (the eager fused entry point is called, as before).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from geoptim._stats import whole_tensors

#: Device types whose tensors take the compiled path (tests add ``"cpu"``: inductor's C++
#: backend compiles the same graph).
DEVICES = {"cuda"}

#: The ``torch.compile`` backend (tests use ``"aot_eager"`` to check the wiring cheaply).
BACKEND = "inductor"

_compiled: dict[tuple[Callable[..., Any], str], Callable[..., Any]] = {}
_failed: set[Callable[..., Any]] = set()


def applies(mode: str, params: Sequence[Tensor]) -> bool:
    """Whether a group's update takes the compiled path: the fused mode and tensors of a
    device in :data:`DEVICES`."""
    return mode == "fused" and bool(params) and params[0].device.type in DEVICES


def compiled(reference: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` of ``reference`` (one per reference and backend, kept)."""
    key = (reference, BACKEND)
    if key not in _compiled:
        _compiled[key] = torch.compile(reference, fullgraph=True, dynamic=False, backend=BACKEND)
    return _compiled[key]


def as_scalar_tensor(value: Any, device: torch.device) -> Any:
    """A number (or a sequence of numbers) as a float64 tensor on ``device``; a tensor as a
    float64 tensor there. What is passed this way does not recompile when it changes."""
    return torch.as_tensor(value, dtype=torch.float64, device=device)


def run(
    reference: Callable[..., Any],
    fallback: Callable[[], Any],
    *args: Any,
    varying: Iterable[str] = (),
    **kwargs: Any,
) -> Any:
    """``reference(*args, **kwargs)`` compiled, with the keyword arguments named in ``varying``
    passed as float64 tensors on the first tensor's device; ``fallback()`` (the eager kernel)
    under an enclosing ``torch.compile`` or after a failed compilation (one warning)."""
    if torch.compiler.is_compiling() or reference in _failed:
        return fallback()
    device = args[0][0].device
    traced = {k: as_scalar_tensor(v, device) if k in varying else v for k, v in kwargs.items()}
    try:
        with whole_tensors():
            return compiled(reference)(*args, **traced)
    except Exception as error:  # any compiler failure leaves the eager path
        _failed.add(reference)
        warnings.warn(
            f"geoptim: torch.compile of {reference.__name__} failed "
            f"({type(error).__name__}: {error}); using the multi-tensor path",
            RuntimeWarning,
            stacklevel=3,
        )
        return fallback()
