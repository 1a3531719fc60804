"""Execute run specs, one JSON record each, skipping runs already recorded.

Runs go to ``workers`` processes (forked, ``torch`` limited to ``threads`` threads each) or, with
one worker, run in this process. Each worker writes its own record atomically the moment its run
ends, so a suite killed at any point keeps every finished run, and the next invocation runs only
what is missing. A worker whose parent died (the suite was killed) exits at its next progress
report instead of finishing a run nobody waits for.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from geoptim.bench.records import (
    SCHEMA_VERSION,
    RunSpec,
    clean_temp_files,
    is_done,
    versions,
    write_record,
)

Executor = Callable[[RunSpec, Callable[[float], None]], dict[str, Any]]


def run_training(spec: RunSpec, progress: Callable[[float], None]) -> dict[str, Any]:
    """The ``"train"`` executor: one task run with one optimizer."""
    from geoptim.bench import tasks

    task = tasks.get_task(spec.task, **spec.task_overrides)
    return task.run(spec.optimizer, dict(spec.hparams), spec.seed, dict(spec.budget),
                    progress=progress)


def run_curvature(spec: RunSpec, progress: Callable[[float], None]) -> dict[str, Any]:
    """The ``"curvature"`` executor: Hessian spectra over training
    (:func:`geoptim.analysis.experiments.curvature_experiment`); ``budget`` gives ``epochs``,
    ``at`` (the epochs to measure) and optionally the estimators' sizes (``k``,
    ``hessian_samples``, ``slq_probes``, ``slq_steps``, ``trace_samples``)."""
    from geoptim.analysis.experiments import curvature_experiment

    sizes = {key: int(value) for key, value in spec.budget.items() if key in CURVATURE_SIZES}
    return curvature_experiment(
        None, task=spec.task, task_options=dict(spec.task_overrides), optimizer=spec.optimizer,
        hparams=dict(spec.hparams), epochs=int(spec.budget["epochs"]),
        at=tuple(spec.budget["at"]), seed=spec.seed, **sizes,
    )


CURVATURE_SIZES = ("k", "hessian_samples", "slq_probes", "slq_steps", "trace_samples")


def run_momentum_tracing(spec: RunSpec, progress: Callable[[float], None]) -> dict[str, Any]:
    """The ``"momentum_tracing"`` executor: ``spec.optimizer`` on the digits ResNet with ReLU
    and with leaky ReLU, with the tracing monitors
    (:func:`geoptim.analysis.experiments.momentum_tracing_experiment`); ``hparams`` give
    ``lr`` and ``weight_decay`` (constant lr), ``budget`` the ``epochs``."""
    from geoptim.analysis.experiments import momentum_tracing_experiment

    runs = tuple((spec.optimizer, activation) for activation in ("relu", "leaky_relu"))
    return momentum_tracing_experiment(
        None, runs=runs, lr=float(spec.hparams["lr"]),
        weight_decay=float(spec.hparams["weight_decay"]), epochs=int(spec.budget["epochs"]),
        seed=spec.seed,
    )


EXECUTORS: dict[str, Executor] = {
    "train": run_training,
    "curvature": run_curvature,
    "momentum_tracing": run_momentum_tracing,
}
"""Run kinds and the function that runs each; a new kind of experiment registers here."""


@dataclass
class Outcome:
    """What the parent learns about one run."""

    spec: RunSpec
    wall_time_s: float = 0.0
    error: str | None = None


@dataclass
class Summary:
    """The result of :func:`execute`."""

    total: int
    skipped: int
    ran: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.ran if outcome.error is not None]


_PARENT_PID: int | None = None


def _init_worker(threads: int, parent_pid: int) -> None:
    import torch

    global _PARENT_PID
    _PARENT_PID = parent_pid
    torch.set_num_threads(threads)


def _progress(_fraction: float) -> None:
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)  # orphaned: the suite was killed, do not finish this run


def run_one(spec: RunSpec, out_dir: str) -> Outcome:
    """Run ``spec`` and write its record; an exception becomes ``Outcome.error`` (no record,
    so the run is retried next time)."""
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    try:
        result = EXECUTORS[spec.kind](spec, _progress)
    except Exception:
        return Outcome(spec, time.perf_counter() - start, traceback.format_exc(limit=8))
    wall = time.perf_counter() - start
    import torch

    steps = int(result.get("steps") or 0)
    write_record(out_dir, {
        "schema": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "config": spec.config(),
        "spec": spec.to_dict(),
        "label": spec.label,
        "task_label": spec.task_label,
        "seed": spec.seed,
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "started_at": started_at,
        "wall_time_s": wall,
        "steps_per_s": steps / wall if wall > 0 else None,
        "result": result,
    })
    return Outcome(spec, wall)


def pending(specs: Sequence[RunSpec], out_dir: str | Path) -> list[RunSpec]:
    """The specs that have no valid record yet."""
    return [spec for spec in specs if not is_done(out_dir, spec.run_id)]


def default_workers() -> int:
    """One worker per core (at least one)."""
    return max(1, os.cpu_count() or 1)


def execute(
    specs: Sequence[RunSpec],
    out_dir: str | Path,
    workers: int = 1,
    threads: int = 1,
    quiet: bool = False,
) -> Summary:
    """Run every spec without a record; show progress (tqdm bar, or log lines if ``quiet``).

    ``threads`` is torch's thread count per worker. One thread per worker process, one worker
    per core is the fastest layout measured (digits, 2 cores: 4 runs took 22 s with 2 workers x
    1 thread, 248 s with 1 process x 2 threads on a busy machine).
    """
    out_dir = str(out_dir)
    clean_temp_files(out_dir)
    todo = pending(specs, out_dir)
    summary = Summary(total=len(specs), skipped=len(specs) - len(todo))
    display = _Display(len(specs), summary.skipped, quiet)
    if summary.skipped:
        display.log(f"{summary.skipped} of {len(specs)} runs already recorded in {out_dir}")
    try:
        if workers <= 1 or len(todo) <= 1:
            _execute_here(todo, out_dir, threads, summary, display)
        else:
            _execute_pool(todo, out_dir, workers, threads, summary, display)
    finally:
        display.close()
    return summary


def _execute_here(todo: list[RunSpec], out_dir: str, threads: int, summary: Summary,
                  display: _Display) -> None:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for spec in todo:
            display.started(spec)
            outcome = run_one(spec, out_dir)
            summary.ran.append(outcome)
            display.finished(outcome)
    finally:
        torch.set_num_threads(previous)


def _execute_pool(todo: list[RunSpec], out_dir: str, workers: int, threads: int,
                  summary: Summary, display: _Display) -> None:
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    queue = list(reversed(todo))
    running: dict[Future[Outcome], RunSpec] = {}
    workers = min(workers, len(todo))
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(threads, os.getpid()),
    ) as pool:
        while queue or running:
            while queue and len(running) < workers:
                spec = queue.pop()
                running[pool.submit(run_one, spec, out_dir)] = spec
                display.started(spec)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                spec = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as err:  # a worker died
                    outcome = Outcome(spec, error=f"worker failed: {err!r}")
                summary.ran.append(outcome)
                display.finished(outcome)


def describe(spec: RunSpec) -> str:
    return f"{spec.task_label} {spec.label} seed={spec.seed}"


class _Display:
    """A tqdm bar (runs done / total, the runs in flight, ETA) or plain log lines."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        self.total = total
        self.done = done
        self.quiet = quiet
        self.running: list[RunSpec] = []
        self.start = time.perf_counter()
        self.fresh = 0
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="run", desc="bench",
                            dynamic_ncols=True, file=sys.stderr)

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, flush=True)

    def started(self, spec: RunSpec) -> None:
        self.running.append(spec)
        self._postfix()

    def finished(self, outcome: Outcome) -> None:
        self.running.remove(outcome.spec)
        self.done += 1
        self.fresh += 1
        if outcome.error is not None:
            self.log(f"FAILED {describe(outcome.spec)}:\n{outcome.error}")
        if self.bar is not None:
            self.bar.update(1)
            self._postfix()
        else:
            print(f"[{self.done}/{self.total}] {describe(outcome.spec)} "
                  f"{outcome.wall_time_s:.1f}s, ETA {self._eta()}", flush=True)

    def _eta(self) -> str:
        elapsed = time.perf_counter() - self.start
        left = (self.total - self.done) * elapsed / max(self.fresh, 1)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def _postfix(self) -> None:
        if self.bar is not None:
            now = ", ".join(f"{s.task_label}/{s.label}/s{s.seed}" for s in self.running)
            self.bar.set_postfix_str(now, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
