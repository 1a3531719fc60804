"""Multi-process training with geoptim: process-group set-up, model wrapping, batch slicing.

geoptim's optimizers need nothing from this package to be correct under ``torch.distributed``:
they take DDP, ``ZeroRedundancyOptimizer`` and FSDP2 (``fully_shard``, including HSDP)
parameters as they are, and reduce the per-tensor statistics of sharded parameters across ranks
themselves (:mod:`geoptim._stats`). The helpers here serve the ``geoptim train`` entry
(:mod:`geoptim.cli.train`) and scripts like it; see ``docs/distributed.md``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["WRAPPERS", "init_from_env", "mean_over_ranks", "rank_slice", "wrap_model"]

WRAPPERS = ("none", "ddp", "fsdp2")


def init_from_env(backend: str | None = None) -> torch.device:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) unless already joined; return this
    process's device. ``backend`` ``None``: NCCL with one GPU per process when CUDA is
    available, gloo on CPU otherwise."""
    if torch.cuda.is_available() and backend in (None, "nccl"):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = backend or "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return device


def wrap_model(model: nn.Module, wrapper: str, device: torch.device) -> nn.Module:
    """``model`` on ``device``, for data parallelism by ``wrapper``:

    * ``"none"``: the model itself;
    * ``"ddp"``: :class:`~torch.nn.parallel.DistributedDataParallel`;
    * ``"fsdp2"``: ``fully_shard`` on every direct child that holds parameters, then on the
      model (parameters become DTensors sharded across all ranks).
    """
    if wrapper not in WRAPPERS:
        raise ValueError(f"wrapper must be one of {', '.join(WRAPPERS)}, got {wrapper!r}")
    model = model.to(device)
    if wrapper == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    if wrapper == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for child in model.children():
            if any(True for _ in child.parameters()):
                fully_shard(child)
        fully_shard(model)
    return model


def rank_slice(*tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous share of a global mini-batch (the first dimension split as evenly
    as possible); the whole batch on every rank when it has fewer rows than there are ranks."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if len(tensors[0]) < world:
        return tensors
    return tuple(torch.tensor_split(t, world)[rank] for t in tensors)


def mean_over_ranks(value: Tensor) -> float:
    """The mean of a scalar over all ranks."""
    total = value.detach().reshape(1).float().clone()
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()
