"""``geoptim train``: train a benchmark task with one optimizer, on one process or many.

One process::

    geoptim train --task digits --optimizer sepnorm --lr 1e-3 --epochs 3

Several processes (``torchrun`` sets the environment; gloo on CPU, NCCL with one GPU per
process)::

    torchrun --nproc_per_node 2 -m geoptim train --distributed fsdp2 \\
        --task digits --optimizer ortsepnorm --lr 1e-3 --weight-decay 0.1 --epochs 3

Every rank builds the same model and data (same seed); each global mini-batch is split across
the ranks (:func:`geoptim.distributed.rank_slice`), so the run sees the same global batches as a
single-process one. The GPU tasks' options (``--task-option amp=bf16``, ``channels_last=true``,
``compile=true``, ``device=cuda``) apply here as in ``geoptim bench``. The lr schedule and the p
schedule (``--hparam p_max=6`` for LPSGD/LPSGDM) are those of the benchmark
(:func:`geoptim.bench.training.setup_optimizer`). Rank 0 prints one line per epoch and, with
``--out``, writes the metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from itertools import islice
from typing import Any

import torch
import torch.distributed as dist

from geoptim.cli.common import (
    ConfigError,
    check_hparams,
    check_task,
    key_text,
    key_value,
    make_task,
    non_negative_float,
    non_negative_int,
    parse_task,
    positive_int,
    task_data,
    writable_file,
)
from geoptim.distributed import WRAPPERS, init_from_env, mean_over_ranks, rank_slice, wrap_model

HELP = "train a benchmark task with one optimizer, on one process or under torchrun (DDP, FSDP2)"

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The environment ``torchrun`` gives every process it starts."""
BACKENDS = ("gloo", "nccl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="digits", help="benchmark task (default: digits)")
    parser.add_argument(
        "--task-option",
        type=key_text,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task option, e.g. model=vgg (repeatable)",
    )
    parser.add_argument("--optimizer", default="sepnorm", help="registry name (default: sepnorm)")
    parser.add_argument("--lr", type=non_negative_float, default=1e-3)
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    parser.add_argument(
        "--hparam",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an optimizer keyword or schedule setting, e.g. betas=[0.9,0.99], "
        "warmup_frac=0.05, lr_schedule=constant, p_max=6 (repeatable)",
    )
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument(
        "--batches-per-epoch", type=positive_int, default=None, help="cap each epoch (smoke runs)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--distributed",
        choices=WRAPPERS,
        default="none",
        help="data parallelism: none (one process), ddp or fsdp2 (run under torchrun)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="process-group backend (default: nccl on GPU, else gloo)",
    )
    parser.add_argument("--out", default=None, help="write the metrics here (JSON)")


def check_launch(distributed: str, backend: str | None) -> None:
    """``--distributed`` runs only under ``torchrun`` (or in a joined process group), with a
    consistent environment; NCCL needs CUDA. :class:`ConfigError` otherwise."""
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("--backend nccl needs CUDA, which is not available; use gloo")
    if distributed == "none" or dist.is_initialized():
        return
    missing = [name for name in TORCHRUN_ENV if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"--distributed {distributed} runs under torchrun ({', '.join(missing)} not set), "
            f"e.g. torchrun --nproc_per_node 2 -m geoptim train --distributed {distributed} ..."
        )
    try:
        rank, world, local, port = (
            int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
        )
    except ValueError:
        raise ConfigError(
            "torchrun's RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers, got "
            + ", ".join(f"{n}={os.environ[n]!r}" for n in TORCHRUN_ENV if n != "MASTER_ADDR")
        ) from None
    if not (0 <= rank < world and 0 <= local <= rank and 0 < port < 65536):
        raise ConfigError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local}, MASTER_PORT={port}"
        )


def run(args: argparse.Namespace) -> int:
    from geoptim.bench.tasks import TrainableTask
    from geoptim.bench.tasks.cifar import GPUTask
    from geoptim.bench.training import setup_optimizer

    name, inline = parse_task(args.task)  # digits:model=vgg, as in bench and tune
    name, options = check_task(name, {**inline, **dict(args.task_option)})
    task = make_task(name, options)
    if not isinstance(task, TrainableTask):
        raise ConfigError(f"task {name!r} has no model and data for `geoptim train`")
    if args.distributed == "fsdp2" and getattr(task, "channels_last", False):
        raise ConfigError(
            "channels_last=true does not work with --distributed fsdp2 (FSDP2 "
            "shards contiguous parameters only); use ddp or leave it off"
        )
    hparams = {"lr": args.lr, "weight_decay": args.weight_decay, **dict(args.hparam)}
    check_hparams(args.optimizer, hparams)
    check_launch(args.distributed, args.backend)
    data = task_data(task, args.seed)
    out = None if args.out is None else writable_file(args.out)
    distributed = args.distributed != "none"
    joined_here = distributed and not dist.is_initialized()
    if distributed:
        device = init_from_env(args.backend)
    elif isinstance(task, GPUTask):
        device = task.torch_device()  # its device option (auto, cuda or cpu)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    is_main = not distributed or dist.get_rank() == 0

    if hasattr(data, "to"):
        data.to(device)
    model = wrap_model(task.make_model(args.seed), args.distributed, device)
    steps = data.steps_per_epoch
    if args.batches_per_epoch:
        steps = min(steps, args.batches_per_epoch)
    setup = setup_optimizer(model, args.optimizer, hparams, args.epochs * steps, args.epochs)

    history: list[dict[str, Any]] = []
    for epoch in range(args.epochs):
        model.train()
        losses = []
        for x, y in islice(data.train_batches(epoch), steps):
            x, y = x.to(device), y.to(device)
            if distributed:
                x, y = rank_slice(x, y)
            loss = task.loss_fn(model(x), y)
            # the global mean, so that every rank stops together on divergence
            losses.append(mean_over_ranks(loss) if distributed else loss.item())
            if not math.isfinite(losses[-1]):
                break
            setup.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            setup.optimizer.step()
            setup.lr_scheduler.step()
        if setup.p_scheduler is not None:
            setup.p_scheduler.step()
        metrics = {"epoch": epoch + 1, "mean_batch_loss": sum(losses) / len(losses)}
        metrics.update(data.evaluate(model))  # every rank: FSDP2 gathers weights in forward
        history.append(metrics)
        if is_main:
            print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        if not math.isfinite(losses[-1]):
            break

    if is_main and out is not None:
        world = dist.get_world_size() if distributed else 1
        record = {
            "task": name,
            "task_options": options,
            "optimizer": args.optimizer,
            "distributed": args.distributed,
            "world_size": world,
            "hparams": hparams,
            "epochs": history,
        }
        out.write_text(json.dumps(record, indent=2))
    if joined_here:
        dist.destroy_process_group()
    return 0
