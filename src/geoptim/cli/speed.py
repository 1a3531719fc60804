"""``geoptim speed``: the time and memory traffic of one ``optimizer.step()``, geoptim against
torch and its peers, in every case a user trains in.

An optimizer step is memory-bound, so every row is read as bandwidth. Two byte counts per
parameter stand side by side:

* ``B/param``, **counted**: the traffic the implementation really makes in one step, every read
  and write of every pass it runs, reductions included (:mod:`geoptim.cli._bandwidth` counts
  each ATen op and each fused C kernel while the step runs). ``GB/s`` is this count over the
  measured time, ``% copy`` that rate as a fraction of a ``torch`` copy of the same tensors
  timed in the same rounds (the machine's achievable bandwidth).
* ``min B/param``, **minimal**: what the update rule must move, each tensor it reads or writes
  once (Lion: parameter, gradient, momentum read, parameter and momentum written: 5 accesses).
  ``% AdamW`` is the rate at minimal bytes as a fraction of torch fused AdamW's rate at its
  minimal bytes: the target definition of issue 12 (an implementation that moves more than the
  minimum, or moves it slowly, falls below 100%).

Cases (:func:`make_cases`): ``fp32`` (``--numel`` parameters in ``--tensors`` flat tensors),
``bf16`` (the same in bfloat16), ``channels_last`` (4-D 3x3 convolution weights of about the same
total in the channels-last layout, float32) and ``small`` (a small model: 20 tensors, 20,000
parameters), each at every ``--threads`` count. ``x fp32`` compares a row's time per parameter
with its own ``fp32`` row at the same thread count.

Method: every row gets its own parameters and gradients (copies of one random set). A first
step creates the state; the memory it allocated and still holds outside the parameters,
gradients and state is ``kept B/param`` (a workspace kept between steps). A second, timed step
sets how many consecutive steps make one timed sample (about :data:`SAMPLE_SECONDS`, so that
small steps are not lost in the timer's resolution; one step for large cases); a third is
counted (bytes). Then rounds time one sample of every row in a shuffled order (interleaved, so
drift in the machine's load spreads over all rows alike) until ``--rounds`` rounds or the
``--budget`` seconds of the case are spent (at least three rounds); a row's time is the median
over rounds, by the wall clock or (``--clock cpu``, for a machine busy with other jobs) the
process's CPU time. The cost of the :class:`~geoptim.CurvaturePScheduler` estimators is timed
the same way on a 20k-parameter MLP. The report opens with a summary per thread count: the
figures issue 12's targets are read from.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import random
import shlex
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geoptim.cli._bandwidth import ByteCount, count_bytes, kept_bytes
from geoptim.cli.common import ConfigError, positive_float, positive_int, writable_file

HELP = "time optimizer steps (geoptim, torch and peers) and count the bytes they move"

Factory = Callable[[list[Tensor]], Any]


@dataclass(frozen=True)
class Entry:
    """One row: ``factory(params)`` builds the optimizer (``None``: the copy reference);
    ``accesses`` per parameter the update rule must make (tensor reads plus writes); ``base``
    the row an AGR row is compared with; ``needs`` the module a peer comes from."""

    label: str
    factory: Factory | None
    accesses: int
    base: str | None = None
    needs: str | None = None


def _entries() -> dict[str, Entry]:
    import geoptim

    def peer(module: str, name: str, **kwargs: Any) -> Factory:
        def make(params: list[Tensor]) -> Any:
            return getattr(importlib.import_module(module), name)(params, **kwargs)

        return make

    sgd, adamw = torch.optim.SGD, torch.optim.AdamW
    po, lp = "pytorch_optimizer", "lion_pytorch"
    return {
        "copy": Entry("copy (bandwidth reference)", None, 2),
        "sgdm_foreach": Entry(
            "torch SGD-momentum (foreach)",
            lambda ps: sgd(ps, lr=1e-3, momentum=0.9, foreach=True),
            5,
        ),
        "sgdm_fused": Entry(
            "torch SGD-momentum (fused)", lambda ps: sgd(ps, lr=1e-3, momentum=0.9, fused=True), 5
        ),
        "adamw_foreach": Entry("torch AdamW (foreach)", lambda ps: adamw(ps, foreach=True), 7),
        "adamw_fused": Entry("torch AdamW (fused)", lambda ps: adamw(ps, fused=True), 7),
        "po_lion": Entry("pytorch-optimizer Lion", peer(po, "Lion"), 5, needs=po),
        "po_adan": Entry(
            "pytorch-optimizer Adan (loop)",
            peer(po, "Adan", weight_decay=0.02, foreach=False),
            11,
            needs=po,
        ),
        "po_adan_foreach": Entry(
            "pytorch-optimizer Adan (foreach)",
            peer(po, "Adan", weight_decay=0.02, foreach=True),
            11,
            needs=po,
        ),
        "lion_pytorch": Entry("lion-pytorch Lion", peer(lp, "Lion"), 5, needs=lp),
        "lion": Entry("geoptim Lion", lambda ps: geoptim.Lion(ps, weight_decay=0.1), 5),
        "signum": Entry("geoptim Signum", lambda ps: geoptim.Signum(ps, weight_decay=0.1), 5),
        "sepnorm": Entry("geoptim SepNorm", lambda ps: geoptim.SepNorm(ps, weight_decay=0.1), 5),
        "ortsepnorm": Entry(
            "geoptim OrtSepNorm", lambda ps: geoptim.OrtSepNorm(ps, weight_decay=0.1), 5
        ),
        "normsgd": Entry("geoptim NormSGD", lambda ps: geoptim.NormSGD(ps, weight_decay=0.1), 5),
        "lpsgdm": Entry(
            "geoptim LPSGDM (p=6)", lambda ps: geoptim.LPSGDM(ps, p=6.0, weight_decay=0.1), 5
        ),
        "lpsgd": Entry("geoptim LPSGD (p=6)", lambda ps: geoptim.LPSGD(ps, p=6.0), 3),
        "adan": Entry("geoptim Adan", lambda ps: geoptim.Adan(ps, weight_decay=0.02), 11),
        "adamw_agr": Entry(
            "geoptim AdamW-AGR (fused AdamW)",
            lambda ps: geoptim.AdamWAGR(ps, fused=True),
            9,
            base="adamw_fused",
        ),
        "adan_agr": Entry(
            "geoptim Adan-AGR", lambda ps: geoptim.AdanAGR(ps, weight_decay=0.02), 13, base="adan"
        ),
    }


def available() -> list[str]:
    """The row names; ``NAME:foreach`` also selects a geoptim optimizer's multi-tensor path."""
    return list(_entries())


#: Timed in every run, whatever ``--optimizers`` selects: the ratios' denominators.
REFERENCES = ("copy", "sgdm_foreach", "sgdm_fused", "adamw_fused")


def resolve(name: str) -> Entry:
    """The entry of row ``name`` (``NAME:foreach``: a geoptim optimizer with ``fused=False``)."""
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

    return Entry(f"{entry.label} (foreach)", multi, entry.accesses, entry.base)


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """The tensors of one timed case: their shapes, dtype and memory layout."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype = torch.float32
    channels_last: bool = False

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)


CASE_NAMES = ("fp32", "bf16", "channels_last", "small")
SMALL_NUMEL, SMALL_TENSORS = 20_000, 20


def _split(numel: int, count: int) -> tuple[tuple[int, ...], ...]:
    count = max(1, min(count, numel))
    return tuple((numel // count + (i < numel % count),) for i in range(count))


def make_cases(numel: int, tensors: int) -> dict[str, Case]:
    """The four cases for ``numel`` parameters in ``tensors`` tensors (module docstring)."""
    channels = max(1, round(math.sqrt(numel / tensors / 9)))
    return {
        "fp32": Case("fp32", _split(numel, tensors)),
        "bf16": Case("bf16", _split(numel, tensors), torch.bfloat16),
        "channels_last": Case(
            "channels_last", ((channels, channels, 3, 3),) * tensors, channels_last=True
        ),
        "small": Case("small", _split(SMALL_NUMEL, SMALL_TENSORS)),
    }


def _make_tensors(case: Case, device: str, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    return [
        torch.randn(shape, generator=gen).to(device, case.dtype).contiguous(memory_format=layout)
        for shape in case.shapes
    ]


# ---------------------------------------------------------------- timing

#: A timed sample lasts at least this long (consecutive steps of one row).
SAMPLE_SECONDS = 2e-3
MIN_ROUNDS = 3

#: ``wall``: elapsed time; ``cpu``: the process's CPU time (every thread's), which leaves out
#: the time other jobs on a busy machine hold the cores.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, clock: Callable[[], float], repeat: int = 1) -> float:
    """Seconds per call of ``fn`` over ``repeat`` consecutive calls (device synchronised)."""
    _sync(device)
    start = clock()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (clock() - start) / repeat


def interleaved(
    samplers: list[Callable[[], float]], rounds: int, budget: float, seed: int
) -> list[list[float]]:
    """Samples of every sampler, one per round in a shuffled order, until ``rounds`` rounds or
    ``budget`` wall-clock seconds (at least :data:`MIN_ROUNDS` rounds)."""
    samples: list[list[float]] = [[] for _ in samplers]
    order = list(range(len(samplers)))
    shuffle = random.Random(seed)
    start = time.perf_counter()
    for done in range(1, rounds + 1):
        shuffle.shuffle(order)
        for index in order:
            samples[index].append(samplers[index]())
        if done >= MIN_ROUNDS and time.perf_counter() - start > budget:
            break
    return samples


class _Row:
    """One optimizer (or the copy) with its own parameters and gradients."""

    def __init__(self, name: str, entry: Entry, params: list[Tensor], grads: list[Tensor]):
        self.name, self.entry = name, entry
        self.params = [p.clone().requires_grad_() for p in params]
        for p, g in zip(self.params, grads):
            p.grad = g.clone()
        if entry.factory is None:
            self.optimizer = None
            self.sources = [p.grad for p in self.params]
            self.targets = [p.detach() for p in self.params]
        else:
            self.optimizer = entry.factory(self.params)
        self.repeat = 1
        self.times: list[float] = []
        self.count = ByteCount()
        self.kept = 0

    def step(self) -> None:
        if self.optimizer is None:
            torch._foreach_copy_(self.targets, self.sources)
        else:
            self.optimizer.step()

    def state(self) -> list[Tensor]:
        """The optimizer's state tensors."""
        if self.optimizer is None:
            return []
        return [
            value
            for state in self.optimizer.state.values()
            for value in state.values()
            if isinstance(value, Tensor)
        ]

    def owned(self) -> list[Tensor]:
        """Parameters, gradients and state: the memory a step may keep."""
        return [*self.params, *(p.grad for p in self.params), *self.state()]


def time_case(
    names: list[str],
    case: Case,
    device: str,
    rounds: int,
    budget: float,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict[str, Any]]:
    """Every row's median step time and counted traffic in one case (interleaved rounds)."""
    params, grads = _make_tensors(case, device, 0), _make_tensors(case, device, 1)
    for g in grads:
        g.mul_(1e-2)
    rows = [_Row(name, resolve(name), params, grads) for name in names]
    del params, grads
    for row in rows:
        row.kept = kept_bytes(row.step, row.owned)  # the first step creates the state
        row.repeat = max(1, math.ceil(SAMPLE_SECONDS / timed(row.step, device, clock)))
        row.count = count_bytes(row.step)
    samplers = [functools.partial(timed, row.step, device, clock, row.repeat) for row in rows]
    for row, times in zip(rows, interleaved(samplers, rounds, budget, case.numel)):
        row.times = times
    results = [_result(row, case) for row in rows]
    _add_ratios(results)
    return results


def _result(row: _Row, case: Case) -> dict[str, Any]:
    """One row's figures in one case (the ratios to other rows are added afterwards)."""
    seconds = statistics.median(row.times)
    numel = case.numel
    element = torch.empty((), dtype=case.dtype).element_size()
    counted = row.count.total / numel
    minimal = row.entry.accesses * element
    unseen = list(row.count.unseen)
    if counted < minimal:  # impossible for a complete count
        unseen.append("fewer bytes than the update rule's minimum: a pass the counter missed")
    return {
        "name": row.name,
        "label": row.entry.label,
        "case": case.name,
        "numel": numel,
        "tensors": len(case.shapes),
        "dtype": str(case.dtype).removeprefix("torch."),
        "layout": "channels_last 4-D" if case.channels_last else "flat",
        "ms": seconds * 1e3,
        "ns_per_param": seconds * 1e9 / numel,
        "bytes_per_param": counted,
        "min_bytes_per_param": minimal,
        "gb_s": counted * numel / seconds / 1e9,
        "min_gb_s": minimal * numel / seconds / 1e9,
        "count_complete": not unseen,
        "uncounted": unseen,
        "aten_ops": row.count.ops,
        "c_kernels": row.count.kernels,
        "state_bytes_per_param": sum(t.numel() * t.element_size() for t in row.state()) / numel,
        "kept_bytes_per_param": row.kept / numel,
        "base": row.entry.base,
        "rounds": len(row.times),
        "steps_per_sample": row.repeat,
    }


def _add_ratios(results: list[dict[str, Any]]) -> None:
    """Ratios to the references and fractions of their bandwidth, within one case."""
    by_name = {r["name"]: r for r in results}
    copy, adamw = by_name.get("copy"), by_name.get("adamw_fused")
    for r in results:
        for ref in REFERENCES[1:]:
            r[f"x_{ref}"] = r["ms"] / by_name[ref]["ms"] if ref in by_name else None
        r["x_base"] = r["ms"] / by_name[r["base"]]["ms"] if r["base"] in by_name else None
        r["copy_fraction"] = r["gb_s"] / copy["gb_s"] if copy and r["count_complete"] else None
        r["adamw_fraction"] = r["min_gb_s"] / adamw["min_gb_s"] if adamw else None


def _add_case_ratios(results: list[dict[str, Any]]) -> None:
    """``x_fp32``: time per parameter over the same row's in the ``fp32`` case (same threads)."""
    fp32 = {(r["name"], r["threads"]): r for r in results if r["case"] == "fp32"}
    for r in results:
        ref = fp32.get((r["name"], r["threads"]))
        r["x_fp32"] = r["ns_per_param"] / ref["ns_per_param"] if ref else None


# ---------------------------------------------------------------- curvature scheduler


def small_model(device: str) -> tuple[nn.Module, Tensor, Tensor]:
    """A 10-layer tanh MLP of width 44 (20 tensors, 19,800 parameters) and a batch of 64."""
    gen = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(10):
        layers += [nn.Linear(44, 44), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).to(device)
    inputs = torch.randn(64, 44, generator=gen).to(device)
    targets = torch.randn(64, 44, generator=gen).to(device)
    return model, inputs, targets


def curvature_cost(
    device: str, rounds: int, budget: float, clock: Callable[[], float] = time.perf_counter
) -> dict[str, Any]:
    """Milliseconds per call of an LPSGDM step, a forward-backward pass, and the
    :class:`~geoptim.CurvaturePScheduler` estimators on :func:`small_model`: ``gradient`` per
    step at its default interval (10; the EMA update every step, the estimate every tenth),
    ``hessian`` per estimate (10 Lanczos steps) and per step at its default interval (100)."""
    import geoptim

    model, inputs, targets = small_model(device)
    optimizer = geoptim.LPSGDM(model.parameters(), p=6.0, lr=1e-3)

    def loss() -> Tensor:
        return nn.functional.mse_loss(model(inputs), targets)

    def backward() -> None:
        optimizer.zero_grad()
        loss().backward()

    backward()
    gradient = geoptim.CurvaturePScheduler(optimizer, p_max=6.0, estimator="gradient")
    hessian = geoptim.CurvaturePScheduler(optimizer, p_max=6.0, estimator="hessian", interval=1)
    interval = gradient.interval

    def gradient_steps() -> None:
        for _ in range(interval):
            gradient.step()

    calls = {
        "backward": backward,
        "step": optimizer.step,
        "gradient": gradient_steps,
        "hessian": lambda: hessian.step(loss),
    }
    for call in calls.values():
        call()
    samplers = [functools.partial(timed, call, device, clock) for call in calls.values()]
    samples = interleaved(samplers, rounds, budget, 0)
    ms = {name: statistics.median(values) * 1e3 for name, values in zip(calls, samples)}
    from geoptim.curvature_schedule import DEFAULT_INTERVAL

    return {
        "step_ms": ms["step"],
        "backward_ms": ms["backward"],
        "gradient_ms_per_step": ms["gradient"] / interval,
        "hessian_ms_per_estimate": ms["hessian"],
        "hessian_ms_per_step": ms["hessian"] / DEFAULT_INTERVAL["hessian"],
        "rounds": len(samples[0]),
    }


def curvature_table(cost: dict[str, Any]) -> str:
    step = cost["step_ms"]
    rows = [
        ("LPSGDM step (the unit)", step),
        ("forward + backward (batch 64)", cost["backward_ms"]),
        ("gradient estimator, per step (interval 10)", cost["gradient_ms_per_step"]),
        ("hessian estimator, per estimate (10 Lanczos steps)", cost["hessian_ms_per_estimate"]),
        ("hessian estimator, per step (interval 100)", cost["hessian_ms_per_step"]),
    ]
    head = "| cost | ms | x optimizer step |\n|---|---:|---:|\n"
    return head + "".join(f"| {name} | {ms:.3f} | {ms / step:.2f} |\n" for name, ms in rows)


# ---------------------------------------------------------------- reporting


def hardware(device: str) -> str:
    """The processor, core count and library versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if device == "cuda":
        text = f"{torch.cuda.get_device_name()} ({text})"
    return f"{text}; torch {torch.__version__}, Python {platform.python_version()}"


def _fmt(value: float | None, digits: int = 2, percent: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{100 * value:.0f}%" if percent else f"{value:.{digits}f}"


TABLE_HEAD = (
    "| optimizer | ms/step | B/param | min B/param | GB/s | % copy | % AdamW "
    "| x SGDm foreach | x SGDm fused | x AdamW fused | x base | x fp32 | state B/param "
    "| kept B/param |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
)


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of one case's results (a ``?`` marks an incomplete byte count)."""
    lines = []
    for r in results:
        counted = _fmt(r["bytes_per_param"], 1) + ("" if r["count_complete"] else "?")
        lines.append(
            f"| {r['label']} | {_fmt(r['ms'], 3 if r['ms'] < 1 else 2)} | {counted} "
            f"| {r['min_bytes_per_param']} | {_fmt(r['gb_s'], 1)} "
            f"| {_fmt(r['copy_fraction'], percent=True)} "
            f"| {_fmt(r['adamw_fraction'], percent=True)} | {_fmt(r['x_sgdm_foreach'])} "
            f"| {_fmt(r['x_sgdm_fused'])} | {_fmt(r['x_adamw_fused'])} | {_fmt(r['x_base'])} "
            f"| {_fmt(r.get('x_fp32'))} | {_fmt(r['state_bytes_per_param'], 1)} "
            f"| {_fmt(r['kept_bytes_per_param'], 1)} |"
        )
    return TABLE_HEAD + "\n".join(lines) + "\n"


def _threads(threads: int | None) -> str:
    return "GPU" if threads is None else f"{threads} thread{'s' * (threads > 1)}"


def title(row: dict[str, Any]) -> str:
    """What a result row's table measured: case, tensors, thread count."""
    return (
        f"{row['case']}: {row['numel']:,} {row['dtype']} params in {row['tensors']} "
        f"{row['layout']} tensors, {_threads(row['threads'])}"
    )


#: The summary's columns: (heading, case, figure).
SUMMARY = (
    ("fp32 % AdamW", "fp32", "adamw_fraction"),
    ("fp32 x SGDm foreach", "fp32", "x_sgdm_foreach"),
    ("fp32 x SGDm fused", "fp32", "x_sgdm_fused"),
    ("fp32 x AdamW fused", "fp32", "x_adamw_fused"),
    ("fp32 x base", "fp32", "x_base"),
    ("bf16 x fp32", "bf16", "x_fp32"),
    ("channels_last x fp32", "channels_last", "x_fp32"),
    ("small x SGDm foreach", "small", "x_sgdm_foreach"),
    ("fp32 kept B/param", "fp32", "kept_bytes_per_param"),
)


def summary(results: list[dict[str, Any]], threads: int | None) -> str:
    """One line per optimizer at one thread count: the figures issue 12's targets are read
    from, gathered from the case tables."""
    by_key = {(r["name"], r["case"]): r for r in results if r["threads"] == threads}
    names = [n for n in dict.fromkeys(r["name"] for r in results) if n not in REFERENCES[:1]]
    head = "| optimizer | " + " | ".join(h for h, _, _ in SUMMARY) + " |\n"
    head += "|---|" + "---:|" * len(SUMMARY) + "\n"
    lines = []
    for name in names:
        cells = []
        for _, case, key in SUMMARY:
            value = by_key.get((name, case), {}).get(key)
            cells.append(_fmt(value, percent=key == "adamw_fraction"))
        label = next(r["label"] for r in results if r["name"] == name)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


LEGEND = (
    "`B/param`: bytes each implementation moved per parameter in one step, counted (every read "
    "and write of every pass, reductions included; `?`: a pass the counter could not see); "
    "`min B/param`: what the update rule must move (each tensor once); `GB/s`: counted bytes "
    "over the median step time; `% copy`: that rate over a torch copy's in the same rounds; "
    "`% AdamW`: the rate at minimal bytes over torch fused AdamW's at its minimal bytes; "
    "`x ...`: time ratios within the table; `x base`: an AGR row over the optimizer it wraps; "
    "`x fp32`: time per parameter over the same row's in the fp32 table at the same thread "
    "count; `state B/param`: the optimizer's state; `kept B/param`: memory the first step "
    "allocated and still holds outside the state (a workspace kept between steps)."
)


def report(payload: dict[str, Any]) -> str:
    """A run (the ``--json`` payload) as Markdown: how it was made, a summary per thread count,
    one table per case and thread count, the scheduler's cost."""
    run_info, results, curvature = payload["run"], payload["results"], payload["curvature"]
    parts = [
        f"## `geoptim speed`, {run_info['date']}",
        "",
        f"- command: `{run_info['command']}`",
        f"- machine: {run_info['machine']}",
        f"- load average {run_info['load_start']:.1f} at the start, {run_info['load_end']:.1f} "
        f"at the end; {run_info['seconds']:.0f} s in all",
        *(f"- {note}" for note in run_info["notes"]),
        "",
        LEGEND,
    ]
    sections: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for row in results:
        sections.setdefault((row["threads"], row["case"]), []).append(row)
    for threads in dict.fromkeys(threads for threads, _ in sections):
        parts += ["", f"### Summary, {_threads(threads)}", "", summary(results, threads)]
    for rows in sections.values():
        parts += ["", f"### {title(rows[0])}", "", table(rows)]
    if curvature is not None:
        heading = (
            "CurvaturePScheduler cost (a 20-tensor, 19,800-parameter MLP, "
            f"{_threads(curvature['threads'])})"
        )
        parts += ["", f"### {heading}", "", curvature_table(curvature)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- the command


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
        "--numel",
        type=_parse_size,
        default=None,
        help="parameters of the fp32, bf16 and channels_last cases (e.g. 1e7, 10M); "
        "default 1e7 (1e8 on CUDA; 1e6 with --quick); the small case is always 20 x 1,000",
    )
    parser.add_argument(
        "--tensors", type=positive_int, default=80, help="tensors the parameters are split into"
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASE_NAMES,
        default=list(CASE_NAMES),
        metavar="CASE",
        help=f"cases to time (default all): {', '.join(CASE_NAMES)}",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        help=f"rows to time (default: all) besides the references {', '.join(REFERENCES)}: "
        f"{', '.join(available())}; NAME:foreach times a geoptim optimizer's multi-tensor "
        "path (fused=False)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=positive_int,
        nargs="+",
        default=[1, 2],
        help="torch thread counts, each timed in turn (CPU; default 1 2)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=15, help="timed rounds per case (at most)"
    )
    parser.add_argument(
        "--budget",
        type=positive_float,
        default=None,
        help="seconds of timed rounds per case (at most; at least 3 rounds); default 3, "
        "0.5 with --quick",
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: the process's CPU time, for a machine busy "
        "with other jobs (with several threads it sums their times, spin-waits included)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1e6 parameters and a 0.5 s budget per case"
    )
    parser.add_argument(
        "--no-curvature", action="store_true", help="skip the CurvaturePScheduler cost"
    )
    parser.add_argument("--markdown", default=None, help="write the tables to this file")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")


def _names(selected: list[str] | None, notes: list[str]) -> list[str]:
    """The rows to time: the references, the selection (default all), the AGR rows' bases;
    peers whose library is missing are dropped with a note."""
    names = list(dict.fromkeys([*REFERENCES, *(selected or available())]))
    try:
        entries = {name: resolve(name) for name in names}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    bases = [e.base for e in entries.values() if e.base and e.base not in entries]
    names += list(dict.fromkeys(bases))
    kept = []
    for name in names:
        needs = resolve(name).needs
        if needs and importlib.util.find_spec(needs) is None:
            notes.append(f"{name} skipped: {needs} is not installed (pip install geoptim[speed])")
        else:
            kept.append(name)
    return kept


def _command(args: argparse.Namespace, numel: int, budget: float) -> str:
    """The command line that repeats this run (every option that shapes it, spelled out)."""
    words = ["geoptim", "speed", "--device", args.device, "--numel", f"{numel:.0e}"]
    words += ["--tensors", str(args.tensors), "--cases", *args.cases]
    if args.device == "cpu":
        words += ["--threads", *map(str, args.threads)]
    words += ["--rounds", str(args.rounds), "--budget", f"{budget:g}", "--clock", args.clock]
    if args.optimizers:
        words += ["--optimizers", *args.optimizers]
    if args.no_curvature:
        words.append("--no-curvature")
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available")
    if args.device == "cuda" and args.clock == "cpu":
        raise ConfigError("--clock cpu: a GPU's time is not the process's CPU time; use wall")
    notes: list[str] = []
    names = _names(args.optimizers, notes)
    outputs = {
        "--markdown": args.markdown and writable_file(args.markdown, "--markdown"),
        "--json": args.json and writable_file(args.json, "--json"),
    }
    default_numel = 10**6 if args.quick else 10**8 if args.device == "cuda" else 10**7
    numel = args.numel or default_numel
    budget = args.budget or (0.5 if args.quick else 3.0)
    cases = make_cases(numel, args.tensors)
    thread_counts: list[int | None] = [None] if args.device == "cuda" else list(args.threads)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run_info: dict[str, Any] = {
        "command": _command(args, numel, budget),
        "date": stamp,
        "machine": hardware(args.device),
        "load_start": os.getloadavg()[0],
        "notes": notes,
    }
    started = time.perf_counter()
    print(f"{run_info['command']}: {stamp}; {run_info['machine']}", flush=True)
    for note in notes:
        print(f"note: {note}", flush=True)
    results: list[dict[str, Any]] = []
    total, done = len(thread_counts) * len(args.cases), 0
    for threads in thread_counts:
        if threads is not None:
            torch.set_num_threads(threads)
        for name in args.cases:
            case = cases[name]
            start = time.perf_counter()
            rows = time_case(names, case, args.device, args.rounds, budget, CLOCKS[args.clock])
            gc.collect()
            for row in rows:
                row["threads"] = threads
            results += rows
            done += 1
            print(
                f"[{done}/{total}] {title(rows[0])}: {len(rows)} rows, {rows[0]['rounds']} "
                f"rounds, {time.perf_counter() - start:.1f} s",
                flush=True,
            )
    _add_case_ratios(results)
    curvature = None
    if not args.no_curvature:
        if thread_counts[0] is not None:
            torch.set_num_threads(thread_counts[0])
        curvature = curvature_cost(args.device, args.rounds, budget, CLOCKS[args.clock])
        curvature["threads"] = thread_counts[0]
    run_info["load_end"] = os.getloadavg()[0]
    run_info["seconds"] = time.perf_counter() - started
    payload = {"run": run_info, "results": results, "curvature": curvature}
    text = report(payload)
    print(text, flush=True)
    if outputs["--markdown"]:
        outputs["--markdown"].write_text(text)
    if outputs["--json"]:
        outputs["--json"].write_text(json.dumps(payload, indent=1))
    return 0


__all__ = [
    "CASE_NAMES",
    "HELP",
    "REFERENCES",
    "Case",
    "Entry",
    "add_arguments",
    "available",
    "curvature_cost",
    "hardware",
    "make_cases",
    "report",
    "resolve",
    "run",
    "summary",
    "table",
    "time_case",
]
