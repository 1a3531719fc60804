"""``geoptim curvature``: train a task and record Hessian spectra at chosen epochs.

    geoptim curvature --task digits --optimizer sgdm --epochs 10 --at 0,1,2,5,10

writes ``curvature.json`` (top eigenvalues, trace, SLQ nodes and weights, anisotropy per recorded
epoch, and the training curves) and ``curvature.png`` (eigenvalue density against epoch, and the
anisotropy over training) to ``--out`` (default ``results/curvature/<task>_<optimizer>``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoptim.analysis.spectrum import trace_estimate
from geoptim.cli.common import (
    ConfigError,
    check_hparams,
    check_task,
    int_at_least,
    key_text,
    key_value,
    make_task,
    non_negative_float,
    non_negative_int,
    parse_task,
    positive_int,
    task_data,
    writable_dir,
)

MIN_TRACE_SAMPLES = trace_estimate.__kwdefaults__["min_samples"]
"""The fewest Hutchinson probes the trace estimate takes (``--trace-samples`` is the most)."""

HELP = "train a task and record Hessian spectra (top eigenvalues, trace, density) over epochs"


def _epochs(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        message = f"expected comma-separated epochs, got {text!r}"
        raise argparse.ArgumentTypeError(message) from error
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected epochs >= 0, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="digits", help="task name (default: digits)")
    parser.add_argument(
        "--option",
        type=key_text,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task option, repeatable (default for digits: model=resnet)",
    )
    parser.add_argument("--optimizer", default="sgdm", help="optimizer name (default: sgdm)")
    parser.add_argument(
        "--lr", type=non_negative_float, help="learning rate (default: per optimizer)"
    )
    parser.add_argument(
        "--weight-decay", type=non_negative_float, help="weight decay (default: per optimizer)"
    )
    parser.add_argument(
        "--hparam",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other hyper-parameter, repeatable",
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=10, help="training epochs (default: 10)"
    )
    parser.add_argument(
        "--at",
        type=_epochs,
        default=[0, 1, 2, 5, 10],
        help="epochs to record, comma-separated; 0 = before training (default: 0,1,2,5,10)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--hessian-samples",
        type=positive_int,
        default=256,
        help="training examples the Hessian is taken on (default: 256)",
    )
    parser.add_argument("--k", type=positive_int, default=3, help="top eigenvalues (default: 3)")
    parser.add_argument(
        "--slq-probes", type=positive_int, default=2, help="SLQ probes (default: 2)"
    )
    parser.add_argument(
        "--slq-steps", type=positive_int, default=32, help="Lanczos steps (default: 32)"
    )
    parser.add_argument(
        "--trace-samples",
        type=int_at_least(MIN_TRACE_SAMPLES),
        default=30,
        help="most Hutchinson probes (default: 30)",
    )
    parser.add_argument(
        "--mode",
        choices=["train", "eval"],
        default="train",
        help="model mode for the Hessian (BatchNorm batch or running statistics)",
    )
    parser.add_argument("--out", help="output directory")


def run(args: argparse.Namespace) -> int:
    from geoptim.bench.experiments import CURVATURE_HPARAMS, curvature_experiment
    from geoptim.bench.tasks import TrainableTask

    name, inline = parse_task(args.task)  # digits:model=vgg, as in bench and tune
    name, checked = check_task(name, {**inline, **dict(args.option)})
    hparams = dict(CURVATURE_HPARAMS.get(args.optimizer, {"lr": 1e-3}))
    if args.lr is not None:
        hparams["lr"] = args.lr
    if args.weight_decay is not None:
        hparams["weight_decay"] = args.weight_decay
    hparams.update(dict(args.hparam))
    check_hparams(args.optimizer, hparams)
    options = checked or None
    task = make_task(name, checked)
    if not isinstance(task, TrainableTask):
        raise ConfigError(f"task {name!r} has no model to take a Hessian of")
    at = sorted({epoch for epoch in args.at if epoch <= args.epochs})
    if not at:
        raise ConfigError(f"no epoch of --at {args.at} lies within --epochs {args.epochs}")
    default_out = Path("results") / "curvature" / f"{name}_{args.optimizer}"
    out = writable_dir(default_out if args.out is None else args.out, create=False)
    task_data(task, args.seed)  # missing data is found now (digits and MNIST-1D stay cached)
    writable_dir(out)
    described = f"{name} {options}" if options else name
    print(
        f"curvature: {described} with {args.optimizer} {hparams}, "
        f"{args.epochs} epochs, recording at {at}",
        flush=True,
    )
    payload = curvature_experiment(
        out,
        task=name,
        task_options=options,
        optimizer=args.optimizer,
        hparams=hparams,
        epochs=args.epochs,
        at=at,
        seed=args.seed,
        hessian_samples=args.hessian_samples,
        k=args.k,
        slq_probes=args.slq_probes,
        slq_steps=args.slq_steps,
        trace_samples=args.trace_samples,
        mode=args.mode,
        progress=lambda line: print(line, flush=True),
    )
    final = payload["training"]["final"]
    print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float)))
    print(f"wrote {out / 'curvature.json'} and {out / 'curvature.png'}")
    return 0
