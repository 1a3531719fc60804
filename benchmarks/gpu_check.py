"""A short real GPU check: CIFAR-shaped ResNet-18 (100 classes) on random stand-in data, a few
hundred steps with each optimizer, bf16 autocast and channels_last (the GPU options of the
benchmark's CIFAR / ImageNet tasks), printing the training throughput per optimizer as a
markdown table. Nothing is downloaded; the data are random tensors made on the device.

Every optimizer runs at its preset (the LPSGD paper's table-4 CIFAR-10 ResNet-18 values where
the table gives one, else the benchmark's default preset), with the warmup + cosine lr schedule,
built by :func:`geoptim.bench.training.setup_optimizer`; LPSGDM stays at ``p = p_max`` (the p
schedule moves once per epoch, and the cost of a step does not depend on ``p``). The first
``--warmup`` steps (cuDNN autotuning, compilation) are not timed; images/s counts forward,
backward and optimizer step. On an H200 the default settings should take
about two minutes (an estimate, not yet measured; ``--compile`` adds a compilation per
optimizer)::

    python benchmarks/gpu_check.py [--steps 300] [--batch 256] [--compile] [--out table.md]

On CPU (``--device cpu --steps 2 --warmup 0 --batch 4``) it checks that every optimizer runs.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from geoptim.bench.models import accelerate, count_params, resnet18
from geoptim.bench.presets import MissingPreset, paper_preset
from geoptim.bench.training import setup_optimizer

OPTIMIZERS = (
    "sgdm", "lpsgdm", "adamw", "lion", "sepnorm", "ortsepnorm", "normsgd", "signum", "adan",
    "adamw_agr",
)  # fmt: skip


def preset(name: str) -> dict:
    """The CIFAR-10 ResNet-18 paper preset of ``name``, else its default preset."""
    try:
        return paper_preset("cifar10", name, {"model": "resnet18"})
    except MissingPreset:
        return paper_preset("digits", name)


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Train ``name`` for ``warmup + steps`` steps; the timed steps' throughput."""
    torch.manual_seed(0)
    model = accelerate(resnet18(100), args.amp, args.channels_last, args.compile).to(device)
    total = args.warmup + args.steps
    setup = setup_optimizer(model, name, preset(name), total, p_intervals=1)
    pool = 8
    x = torch.randn(pool * args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (pool * args.batch,), device=device)
    loss = torch.zeros((), device=device)
    start = 0.0
    for step in range(total):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        i = step % pool
        xb, yb = x[i * args.batch : (i + 1) * args.batch], y[i * args.batch : (i + 1) * args.batch]
        loss = F.cross_entropy(model(xb), yb)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        setup.lr_scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "optimizer": name,
        "images_per_s": args.steps * args.batch / seconds,
        "ms_per_step": 1000 * seconds / args.steps,
        "final_loss": float(loss.detach()),
        "params": count_params(model),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per optimizer")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--amp", default="bf16", choices=("none", "bf16"))
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("--steps and --batch must be >= 1, --warmup >= 0")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"ResNet-18 (CIFAR, 100 classes), batch {args.batch}, {args.steps} timed steps after "
        f"{args.warmup}, amp {args.amp}, channels_last {args.channels_last}, compile "
        f"{args.compile}, {where}, torch {torch.__version__}",
        "",
        "| optimizer | images/s | ms/step | final loss |",
        "| --- | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    failed = []
    for name in args.optimizers:
        row = measure(name, args, device)
        if not math.isfinite(row["final_loss"]):
            failed.append(name)
        line = (
            f"| {name} | {row['images_per_s']:.0f} | {row['ms_per_step']:.2f} | "
            f"{row['final_loss']:.3f} |"
        )
        lines.append(line)
        print(line, flush=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if failed:
        print(f"non-finite loss: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
