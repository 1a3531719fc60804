"""``geoptim speed``: the time of one ``optimizer.step()``, geoptim against its peers.

An optimizer step is memory-bound, so every row is also read as bandwidth: ``bytes/param`` is
what the update rule must move per parameter (each tensor it reads or writes, once; reductions
such as SepNorm's norms are not counted), and ``GB/s`` that amount over the measured time. A
plain copy of a parameter-sized buffer (8 bytes per parameter) measures the machine's bandwidth.

Method: every optimizer gets its own parameters and gradients (``--tensors`` tensors holding the
size's parameters); after warm-up steps, rounds time one ``step()`` of every optimizer in a
shuffled order (interleaved, so drift in the machine's load spreads over all rows alike) until
the round count or the time budget is reached; each row reports the median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geoptim.cli.common import ConfigError, positive_float, positive_int, writable_dir

HELP = "time optimizer steps (geoptim and peers) and write a table and a plot"

Factory = Callable[[list[Tensor]], Any]


@dataclass(frozen=True)
class Entry:
    """One row: ``factory(params)`` builds the optimizer (``None``: the copy reference);
    ``bytes`` per fp32 parameter moved by the update rule; ``base`` the row an AGR row is
    compared with."""

    label: str
    factory: Factory | None
    bytes: int
    base: str | None = None


def _entries() -> dict[str, Entry]:
    import geoptim

    def peer(module: str, name: str, **kwargs: Any) -> Factory:
        def make(params: list[Tensor]) -> Any:
            cls = getattr(__import__(module, fromlist=[name]), name)
            return cls(params, **kwargs)

        return make

    sgd, adamw = torch.optim.SGD, torch.optim.AdamW
    return {
        "copy": Entry("copy (bandwidth reference)", None, 8),
        "sgdm_foreach": Entry(
            "torch SGD-momentum (foreach)",
            lambda ps: sgd(ps, lr=1e-3, momentum=0.9, foreach=True),
            20,
        ),
        "sgdm_fused": Entry(
            "torch SGD-momentum (fused)", lambda ps: sgd(ps, lr=1e-3, momentum=0.9, fused=True), 20
        ),
        "adamw_foreach": Entry(
            "torch AdamW (foreach)", lambda ps: adamw(ps, lr=1e-3, foreach=True), 28
        ),
        "adamw_fused": Entry("torch AdamW (fused)", lambda ps: adamw(ps, lr=1e-3, fused=True), 28),
        "po_lion": Entry("pytorch-optimizer Lion", peer("pytorch_optimizer", "Lion"), 20),
        "po_adan": Entry(
            "pytorch-optimizer Adan (loop)",
            peer("pytorch_optimizer", "Adan", weight_decay=0.02, foreach=False),
            44,
        ),
        "po_adan_foreach": Entry(
            "pytorch-optimizer Adan (foreach)",
            peer("pytorch_optimizer", "Adan", weight_decay=0.02, foreach=True),
            44,
        ),
        "lion_pytorch": Entry("lion-pytorch Lion", peer("lion_pytorch", "Lion"), 20),
        "lion": Entry("geoptim Lion", lambda ps: geoptim.Lion(ps, weight_decay=0.1), 20),
        "signum": Entry("geoptim Signum", lambda ps: geoptim.Signum(ps, weight_decay=0.1), 20),
        "sepnorm": Entry("geoptim SepNorm", lambda ps: geoptim.SepNorm(ps, weight_decay=0.1), 20),
        "ortsepnorm": Entry(
            "geoptim OrtSepNorm", lambda ps: geoptim.OrtSepNorm(ps, weight_decay=0.1), 20
        ),
        "normsgd": Entry("geoptim NormSGD", lambda ps: geoptim.NormSGD(ps, weight_decay=0.1), 20),
        "lpsgdm": Entry(
            "geoptim LPSGDM (p=6)", lambda ps: geoptim.LPSGDM(ps, p=6.0, weight_decay=0.1), 20
        ),
        "lpsgd": Entry("geoptim LPSGD (p=6)", lambda ps: geoptim.LPSGD(ps, p=6.0), 12),
        "adan": Entry("geoptim Adan", lambda ps: geoptim.Adan(ps, weight_decay=0.02), 44),
        "adamw_agr": Entry(
            "geoptim AdamW-AGR (fused AdamW)",
            lambda ps: geoptim.AdamWAGR(ps, lr=1e-3, fused=True),
            36,
            base="adamw_fused",
        ),
        "adan_agr": Entry(
            "geoptim Adan-AGR", lambda ps: geoptim.AdanAGR(ps, weight_decay=0.02), 52, base="adan"
        ),
    }


def available() -> list[str]:
    """The row names; ``NAME:foreach`` also selects a geoptim optimizer's multi-tensor path."""
    return list(_entries())


REFERENCES = ("sgdm_foreach", "sgdm_fused", "adamw_fused")


def _parse_size(text: str) -> int:
    try:
        value = float(text.lower().replace("m", "e6").replace("k", "e3"))
    except ValueError:
        value = math.nan
    if not 1 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a size >= 1 (e.g. 1e6, 10M), got {text!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=_parse_size,
        nargs="+",
        default=[100_000, 1_000_000, 10_000_000],
        help="total parameter counts (e.g. 1e6 10M); default 1e5 1e6 1e7",
    )
    parser.add_argument(
        "--tensors", type=positive_int, default=80, help="tensors the parameters are split into"
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        help=f"rows to time (default: all): {', '.join(available())}; NAME:foreach times a "
        "geoptim optimizer's multi-tensor path (fused=False)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads (default: all)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=30, help="timed steps per row (at most)"
    )
    parser.add_argument(
        "--budget", type=positive_float, default=45.0, help="seconds of timing per size (at most)"
    )
    parser.add_argument("--out", default="speed", help="output directory")


# ---------------------------------------------------------------- timing


def _resolve(name: str) -> Entry:
    entries = _entries()
    base_name, _, variant = name.partition(":")
    if base_name not in entries or variant not in ("", "foreach"):
        raise ValueError(f"unknown row {name!r}; known: {', '.join(entries)} (and NAME:foreach)")
    entry = entries[base_name]
    if not variant:
        return entry
    if entry.factory is None or not entry.label.startswith("geoptim"):
        raise ValueError(f"{name!r}: ':foreach' applies to geoptim optimizers only")
    factory = entry.factory

    def multi(params: list[Tensor]) -> Any:
        optimizer = factory(params)
        for group in optimizer.param_groups:
            group["fused"] = False
        return optimizer

    return Entry(f"{entry.label} (foreach)", multi, entry.bytes, entry.base)


def _tensors(size: int, count: int, device: str, seed: int) -> list[Tensor]:
    count = max(1, min(count, size))
    lengths = [size // count + (i < size % count) for i in range(count)]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen).to(device) for n in lengths]


class _Row:
    """One optimizer (or the copy) with its own parameters and gradients."""

    def __init__(self, entry: Entry, size: int, count: int, device: str) -> None:
        self.entry = entry
        self.params = [p.requires_grad_() for p in _tensors(size, count, device, 0)]
        for p, g in zip(self.params, _tensors(size, count, device, 1)):
            p.grad = g.mul_(1e-2)
        if entry.factory is None:
            self.optimizer = None
            self.sources = [p.grad for p in self.params]
            self.targets = [p.detach() for p in self.params]
        else:
            self.optimizer = entry.factory(self.params)
        self.times: list[float] = []

    def step(self) -> None:
        if self.optimizer is None:
            torch._foreach_copy_(self.targets, self.sources)
        else:
            self.optimizer.step()

    def state_bytes(self) -> float:
        """Bytes of optimizer state per parameter (tensors of the parameter's size)."""
        if self.optimizer is None:
            return 0.0
        total = sum(
            value.numel() * value.element_size()
            for state in self.optimizer.state.values()
            for value in state.values()
            if isinstance(value, Tensor) and value.dim() > 0
        )
        return total / sum(p.numel() for p in self.params)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_size(
    names: list[str], size: int, count: int, device: str, rounds: int, budget: float
) -> list[dict[str, Any]]:
    """Median step time of every row at one size (interleaved, shuffled rounds)."""
    rows = {name: _Row(_resolve(name), size, count, device) for name in names}
    for row in rows.values():
        for _ in range(3):
            row.step()
    _sync(device)
    order = list(rows.values())
    shuffle = random.Random(size)
    start = time.perf_counter()
    for done in range(rounds):
        shuffle.shuffle(order)
        for row in order:
            _sync(device)
            t0 = time.perf_counter()
            row.step()
            _sync(device)
            row.times.append(time.perf_counter() - t0)
        if done >= 4 and time.perf_counter() - start > budget:
            break
    results = []
    for name, row in rows.items():
        seconds = statistics.median(row.times)
        results.append(
            {
                "name": name,
                "label": row.entry.label,
                "size": size,
                "ms": seconds * 1e3,
                "bytes_per_param": row.entry.bytes,
                "gb_s": row.entry.bytes * size / seconds / 1e9,
                "state_bytes_per_param": row.state_bytes(),
                "base": row.entry.base,
                "rounds": len(row.times),
            }
        )
    _add_ratios(results)
    return results


def _add_ratios(results: list[dict[str, Any]]) -> None:
    ms = {r["name"]: r["ms"] for r in results}
    for r in results:
        for ref in REFERENCES:
            r[f"x_{ref}"] = r["ms"] / ms[ref] if ref in ms else None
        r["x_base"] = r["ms"] / ms[r["base"]] if r["base"] in ms else None


# ---------------------------------------------------------------- reporting


def hardware(device: str) -> str:
    """The processor, thread count and library versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device == "cuda":
        text = f"{torch.cuda.get_device_name()} ({text})"
    return f"{text}; torch {torch.__version__}, Python {platform.python_version()}"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of one size's results."""
    head = (
        "| optimizer | ms/step | bytes/param | GB/s | x SGDm foreach | x SGDm fused "
        "| x AdamW fused | x base | state bytes/param |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['label']} | {_fmt(r['ms'])} | {r['bytes_per_param']} | {_fmt(r['gb_s'], 1)} "
        f"| {_fmt(r['x_sgdm_foreach'])} | {_fmt(r['x_sgdm_fused'])} | {_fmt(r['x_adamw_fused'])} "
        f"| {_fmt(r['x_base'])} | {_fmt(r['state_bytes_per_param'], 0)} |"
        for r in results
    ]
    return head + "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Step time against size, one line per row (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    names = list(dict.fromkeys(r["name"] for r in results))
    colours = plt.get_cmap("tab20")
    for index, name in enumerate(names):
        points = sorted((r["size"], r["ms"]) for r in results if r["name"] == name)
        label = next(r["label"] for r in results if r["name"] == name)
        style = "--" if not label.startswith("geoptim") else "-"
        colour = colours(index % 20)
        ax.plot(*zip(*points), style, marker="o", markersize=3, label=label, color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("ms per step (median)")
    ax.set_title("optimizer step time (dashed: peers and references)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available")
    names = args.optimizers or available()
    try:
        for name in names:
            _resolve(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = writable_dir(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = f"{stamp}; {hardware(args.device)}; {args.tensors} float32 tensors per size"
    print(header)
    results: list[dict[str, Any]] = []
    sections = []
    for size in args.sizes:
        rows = time_size(names, size, args.tensors, args.device, args.rounds, args.budget)
        results += rows
        section = f"### {size:,} parameters\n\n{table(rows)}"
        sections.append(section)
        print(section, flush=True)
    (out / "speed.md").write_text(f"{header}\n\n" + "\n".join(sections))
    (out / "speed.json").write_text(json.dumps({"header": header, "results": results}, indent=1))
    plot(results, out / "speed.png")
    print(f"wrote {out / 'speed.md'}, speed.json and speed.png")
    return 0


__all__ = ["HELP", "Entry", "add_arguments", "available", "hardware", "run", "table", "time_size"]
