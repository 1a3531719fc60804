"""Execute run specs, one JSON record each, skipping runs already recorded.

:func:`execute` holds a lock on the output directory for the whole run (a second ``geoptim
bench`` on it waits or stops, :func:`directory_lock`), records which suite the runs belong to,
then hands the runs without a trusted record to an executor (:mod:`geoptim.bench.executors`: a
local process pool, or Ray). Each run, wherever it executes (:func:`run_one`), is first claimed
(:mod:`geoptim.bench.claiming`), so that drivers sharing a directory on network storage, where a
lock may not hold, still run it once; its worker then writes the record atomically the moment the
run ends. A suite killed at any point keeps every finished run, and the next invocation runs only
what is missing. A run whose worker died is re-run once; a run that raised is reported with its
traceback and the others go on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import socket
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from geoptim.bench.checkpoints import Checkpoint, CheckpointPolicy
from geoptim.bench.claiming import (
    CLAIM_TIMEOUT_S,
    HEARTBEAT_S,
    break_claim,
    heartbeat,
    is_held,
    new_token,
    release,
    try_claim,
)
from geoptim.bench.executors import Executor, LocalExecutor
from geoptim.bench.records import (
    OTHER_VERSION,
    TAMPERED,
    Record,
    RunSpec,
    add_to_plan,
    clean_temp_files,
    inspect_record,
    is_done,
    record_path,
    write_record,
)

RunKind = Callable[
    [RunSpec, Callable[[float], None], "Checkpoint | None"], tuple[dict[str, Any], "str | None"]
]
"""Runs a spec (calling ``progress(fraction)`` now and then, resuming from and saving to the
checkpoint where the kind can); returns its result and the hash of the data it used (``None``
when the task gives none)."""

LOCK_NAME = ".lock"
BUSY_POLL_S = 2.0
"""How often a run that another live worker holds is looked at again."""
CRASH_RERUNS = 1
"""How many times a run whose worker died is run again."""
DEFAULT_CHECKPOINTS = CheckpointPolicy()
"""Mid-run checkpoints at epoch ends, at least a minute apart."""


def run_training(
    spec: RunSpec, progress: Callable[[float], None], checkpoint: Checkpoint | None = None
) -> tuple[dict[str, Any], str | None]:
    """The ``"train"`` kind: one task run with one optimizer (a task trained by the shared loop
    resumes from and saves to ``checkpoint``)."""
    from geoptim.bench import tasks

    task = tasks.get_task(spec.task, **spec.task_overrides)
    options: dict[str, Any] = {"progress": progress}
    if isinstance(task, tasks.TrainableTask):
        options["checkpoint"] = checkpoint
    result = task.run(spec.optimizer, dict(spec.hparams), spec.seed, dict(spec.budget), **options)
    data_hash = getattr(task, "data_hash", None)
    return result, (str(data_hash()) if callable(data_hash) else None)


def run_curvature(
    spec: RunSpec, progress: Callable[[float], None], checkpoint: Checkpoint | None = None
) -> tuple[dict[str, Any], str | None]:
    """The ``"curvature"`` kind: Hessian spectra over training
    (:func:`geoptim.bench.experiments.curvature_experiment`); ``budget`` gives ``epochs``,
    ``at`` (the epochs to measure) and optionally the estimators' sizes (``k``,
    ``hessian_samples``, ``slq_probes``, ``slq_steps``, ``trace_samples``) and the ``mode``
    the Hessian is taken in (``"train"`` or ``"eval"``)."""
    from geoptim.bench.experiments import curvature_experiment

    sizes: dict[str, Any] = {
        key: int(value) for key, value in spec.budget.items() if key in CURVATURE_SIZES
    }
    if "mode" in spec.budget:
        sizes["mode"] = str(spec.budget["mode"])
    return curvature_experiment(
        None,
        task=spec.task,
        task_options=dict(spec.task_overrides),
        optimizer=spec.optimizer,
        hparams=dict(spec.hparams),
        epochs=int(spec.budget["epochs"]),
        at=tuple(spec.budget["at"]),
        seed=spec.seed,
        **sizes,
    ), None


CURVATURE_SIZES = ("k", "hessian_samples", "slq_probes", "slq_steps", "trace_samples")


def run_momentum_tracing(
    spec: RunSpec, progress: Callable[[float], None], checkpoint: Checkpoint | None = None
) -> tuple[dict[str, Any], str | None]:
    """The ``"momentum_tracing"`` kind: ``spec.optimizer`` on the digits ResNet with ReLU
    and with leaky ReLU, with the tracing monitors
    (:func:`geoptim.bench.experiments.momentum_tracing_experiment`); ``hparams`` give
    ``lr`` and ``weight_decay`` (constant lr), ``budget`` the ``epochs``."""
    from geoptim.bench.experiments import momentum_tracing_experiment

    runs = tuple((spec.optimizer, activation) for activation in ("relu", "leaky_relu"))
    return momentum_tracing_experiment(
        None,
        runs=runs,
        lr=float(spec.hparams["lr"]),
        weight_decay=float(spec.hparams["weight_decay"]),
        epochs=int(spec.budget["epochs"]),
        seed=spec.seed,
    ), None


RUN_KINDS: dict[str, RunKind] = {
    "train": run_training,
    "curvature": run_curvature,
    "momentum_tracing": run_momentum_tracing,
}
"""Run kinds and the function that runs each; a new kind of experiment registers here."""

DONE, FAILED, RECORDED, BUSY, DISK_FULL = "done", "failed", "recorded", "busy", "disk full"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class Outcome:
    """What the driver learns about one run: ``status`` :data:`DONE` (ran, record written),
    :data:`FAILED` (``error`` holds the traceback; no record, so it is retried next time),
    :data:`RECORDED` (found finished by someone else), :data:`BUSY` (another live worker
    holds its claim) or :data:`DISK_FULL` (the record could not be written: no space; the
    driver stops and raises)."""

    spec: RunSpec
    wall_time_s: float = 0.0
    error: str | None = None
    status: str = DONE


@dataclass
class Summary:
    """The result of :func:`execute`: ``skipped`` runs were already recorded (before, or
    meanwhile by another driver)."""

    total: int
    skipped: int
    ran: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.ran if outcome.error is not None]


def _no_progress(_fraction: float) -> None:
    pass


def run_one(
    spec: RunSpec,
    out_dir: str,
    token: str | None = None,
    threads: int | None = None,
    claim_timeout: float = CLAIM_TIMEOUT_S,
    accept_other_versions: bool = False,
    checkpoints: CheckpointPolicy | None = None,
) -> Outcome:
    """Claim ``spec``, run it unless it is recorded, write its record, release the claim.

    Runs in the worker (any executor). An exception in the run becomes a :data:`FAILED`
    outcome; ``threads``: torch threads to use (``None``: leave as set). With ``checkpoints``
    the run resumes from its mid-run checkpoint in ``out_dir`` and saves one as it goes; the
    checkpoint is removed once the record is written.
    """
    claim = try_claim(out_dir, spec.run_id, token, claim_timeout)
    if claim is None:
        return Outcome(spec, status=BUSY)
    try:
        if is_done(out_dir, spec.run_id, accept_other_versions):
            return Outcome(spec, status=RECORDED)
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        start = time.perf_counter()
        checkpoint = None if checkpoints is None else checkpoints.for_run(out_dir, spec.run_id)
        with heartbeat(out_dir, claim, min(HEARTBEAT_S, claim_timeout / 4)):
            try:
                result, data_hash = RUN_KINDS[spec.kind](spec, _no_progress, checkpoint)
            except Exception:
                return Outcome(
                    spec, time.perf_counter() - start, traceback.format_exc(limit=8), FAILED
                )
            wall = time.perf_counter() - start
            record = Record.for_run(
                spec,
                result,
                data_hash=data_hash,
                started_at=started_at,
                wall_time_s=wall,
                torch_threads=torch.get_num_threads(),
            )
            try:
                write_record(out_dir, record)
            except OSError as err:
                if err.errno not in _DISK_FULL_ERRNOS:
                    raise
                return Outcome(spec, wall, os.strerror(err.errno), DISK_FULL)
        if checkpoint is not None:
            checkpoint.discard()
        return Outcome(spec, wall)
    finally:
        release(out_dir, claim)


def pending(
    specs: Sequence[RunSpec], out_dir: str | Path, accept_other_versions: bool = False
) -> tuple[list[RunSpec], list[str]]:
    """The specs without a trusted record, and one warning per record that will be redone
    because it is not trusted (edited, or of another version)."""
    todo, notes = [], []
    others = 0
    for spec in specs:
        path = record_path(out_dir, spec.run_id)
        if not path.exists():
            todo.append(spec)
            continue
        _, problem = inspect_record(path)
        if problem is None or (accept_other_versions and problem == OTHER_VERSION):
            continue
        todo.append(spec)
        if problem == TAMPERED:
            notes.append(
                f"warning: record {path.name} does not match its config (edited?); "
                f"re-running {describe(spec)}"
            )
        others += problem == OTHER_VERSION
    if others:
        notes.append(
            f"warning: {others} record(s) were written by another geoptim version or "
            "record schema; re-running them (--accept-other-versions keeps them)"
        )
    return todo, notes


def default_workers(threads: int = 1) -> int:
    """One worker per ``threads`` cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // threads)


class DirectoryBusy(RuntimeError):
    """Another process holds the output directory's lock."""


@contextlib.contextmanager
def directory_lock(
    out_dir: Path, wait: bool = False, log: Callable[[str], None] = print
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out_dir/.lock`` for the block.

    When another process holds it: wait for it (saying so through ``log``) if ``wait``, else
    raise :class:`DirectoryBusy` naming the holder. Where the file system refuses locks (some
    network file systems) a warning is logged and the claims alone keep runs from running twice.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_NAME, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if not wait:
                raise DirectoryBusy(
                    f"{out_dir} is in use by {holder}; wait for it to finish, or pass --wait"
                ) from None
            log(f"waiting for {holder} to finish with {out_dir} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            log(f"warning: cannot lock {out_dir} ({err.strerror}); relying on claim files")
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"geoptim bench (pid {os.getpid()} on {socket.gethostname()}, since "
            f"{datetime.now(timezone.utc).isoformat(timespec='seconds')})\n"
        )
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def execute(
    specs: Sequence[RunSpec],
    out_dir: str | Path,
    workers: int = 1,
    threads: int = 1,
    quiet: bool = False,
    *,
    executor: Executor | None = None,
    wait: bool = False,
    accept_other_versions: bool = False,
    lock: bool = True,
    claim_timeout: float = CLAIM_TIMEOUT_S,
    checkpoints: CheckpointPolicy | None = DEFAULT_CHECKPOINTS,
) -> Summary:
    """Run every spec without a trusted record; show progress (a tqdm bar: runs done / total,
    failures, ETA; or log lines if ``quiet``).

    ``executor`` defaults to a :class:`~geoptim.bench.executors.LocalExecutor` of ``workers``
    processes with ``threads`` torch threads each. One thread per worker process, one worker
    per core is the fastest local layout measured (digits, 2 cores: 4 runs took 22 s with 2
    workers x 1 thread, 248 s with 1 process x 2 threads on a busy machine). ``wait``: wait
    for another process holding the directory instead of raising :class:`DirectoryBusy`;
    ``lock=False`` skips the lock (claims still apply). ``accept_other_versions``: a record of
    another geoptim version counts as done. ``checkpoints``: when runs save mid-run
    checkpoints (``None``: never); a run killed part-way resumes from its checkpoint.
    """
    out = Path(out_dir)
    log = functools.partial(print, file=sys.stderr, flush=True)
    with directory_lock(out, wait, log) if lock else contextlib.nullcontext():
        clean_temp_files(out)
        for suite in sorted({spec.suite for spec in specs} - {""}):
            add_to_plan(out, suite, [spec.run_id for spec in specs if spec.suite == suite])
        todo, notes = pending(specs, out, accept_other_versions)
        summary = Summary(total=len(specs), skipped=len(specs) - len(todo))
        display = _Display(len(specs), summary.skipped, quiet)
        for note in notes:
            display.log(note)
        if summary.skipped:
            display.log(f"{summary.skipped} of {len(specs)} runs already recorded in {out}")
        own = executor is None
        if executor is None:
            executor = LocalExecutor(min(workers, max(len(todo), 1)), threads)
        try:
            _drive(
                todo,
                str(out),
                executor,
                summary,
                display,
                claim_timeout,
                accept_other_versions,
                checkpoints,
            )
        finally:
            if own:
                executor.close()
            display.close()
    return summary


def _drive(
    todo: list[RunSpec],
    out_dir: str,
    executor: Executor,
    summary: Summary,
    display: _Display,
    claim_timeout: float,
    accept_other_versions: bool,
    checkpoints: CheckpointPolicy | None,
) -> None:
    """Keep ``executor.slots`` runs in flight until every run is done, failed, or recorded by
    someone else; re-run a run whose worker died once; look again at busy runs every
    :data:`BUSY_POLL_S`."""
    by_id = {spec.run_id: spec for spec in todo}
    queue = deque(todo)
    busy: list[tuple[float, RunSpec]] = []
    tokens: dict[str, str] = {}
    crashes: Counter[str] = Counter()
    in_flight = 0
    disk_full: Outcome | None = None
    while queue or busy or in_flight:
        now = time.monotonic()
        still_busy = []
        for due, spec in busy:  # look again, here: cheaper than a trip to a worker
            if due > now:
                still_busy.append((due, spec))
            elif is_done(out_dir, spec.run_id, accept_other_versions):
                summary.skipped += 1
                display.finished(Outcome(spec, status=RECORDED))
            elif is_held(out_dir, spec.run_id, claim_timeout):
                still_busy.append((now + BUSY_POLL_S, spec))
            else:
                queue.append(spec)
        busy = still_busy
        while queue and in_flight < executor.slots:
            spec = queue.popleft()
            tokens[spec.run_id] = new_token()
            executor.submit(
                spec.run_id,
                run_one,
                spec,
                out_dir,
                tokens[spec.run_id],
                executor.threads_per_run,
                claim_timeout,
                accept_other_versions,
                checkpoints,
                gpu=wants_gpu(spec),
            )
            display.started(spec)
            in_flight += 1
        if not in_flight:
            if busy:
                time.sleep(max(0.0, min(due for due, _ in busy) - now))
            continue
        done = executor.next_done()
        in_flight -= 1
        spec = by_id[done.key]
        if done.crashed:
            break_claim(out_dir, spec.run_id, tokens[spec.run_id])
            crashes[spec.run_id] += 1
            if crashes[spec.run_id] <= CRASH_RERUNS:
                display.log(
                    f"worker died running {describe(spec)} ({done.error}); running it again"
                )
                display.put_back(spec)
                queue.append(spec)
                continue
        outcome = (
            done.value if done.error is None else Outcome(spec, error=done.error, status=FAILED)
        )
        if outcome.status == BUSY:
            display.put_back(spec)
            busy.append((time.monotonic() + BUSY_POLL_S, spec))
        elif outcome.status == DISK_FULL:
            queue.clear()  # nothing more can be recorded: let the runs in flight end, then stop
            busy.clear()
            disk_full = outcome
        elif outcome.status == RECORDED:
            summary.skipped += 1
            display.finished(outcome)
        else:
            summary.ran.append(outcome)
            display.finished(outcome)
    if disk_full is not None:
        raise OSError(errno.ENOSPC, f"{disk_full.error}: {out_dir}")


@functools.cache
def _task_device(task: str, overrides: str) -> str:
    import json

    from geoptim.bench import tasks

    try:
        return str(getattr(tasks.get_task(task, **json.loads(overrides)), "device", "cpu"))
    except Exception:
        return "cpu"


def wants_gpu(spec: RunSpec) -> bool:
    """Whether the run's task trains on a GPU when there is one (its ``device`` is not
    ``"cpu"``)."""
    import json

    return _task_device(spec.task, json.dumps(spec.task_overrides, sort_keys=True)) != "cpu"


def describe(spec: RunSpec) -> str:
    return f"{spec.task_label} {spec.label} seed={spec.seed}"


class _Display:
    """A tqdm bar (runs done / total, failures, the runs in flight, ETA) or plain log lines."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        self.total = total
        self.done = done
        self.quiet = quiet
        self.failures = 0
        self.running: list[RunSpec] = []
        self.start = time.perf_counter()
        self.fresh = 0
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                unit="run",
                desc="bench",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, flush=True)

    def started(self, spec: RunSpec) -> None:
        self.running.append(spec)
        self._postfix()

    def put_back(self, spec: RunSpec) -> None:
        """``spec`` left the workers unfinished (busy elsewhere, or its worker died)."""
        self.running.remove(spec)
        self._postfix()

    def finished(self, outcome: Outcome) -> None:
        if outcome.spec in self.running:
            self.running.remove(outcome.spec)
        self.done += 1
        self.fresh += 1
        if outcome.error is not None:
            self.failures += 1
            self.log(f"FAILED {describe(outcome.spec)}:\n{outcome.error}")
        if self.bar is not None:
            self.bar.update(1)
            self._postfix()
        else:
            print(
                f"[{self.done}/{self.total}] {describe(outcome.spec)} "
                f"{outcome.wall_time_s:.1f}s, ETA {self._eta()}",
                flush=True,
            )

    def _eta(self) -> str:
        elapsed = time.perf_counter() - self.start
        left = (self.total - self.done) * elapsed / max(self.fresh, 1)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def _postfix(self) -> None:
        if self.bar is not None:
            now = ", ".join(f"{s.task_label}/{s.label}/s{s.seed}" for s in self.running)
            failed = f"{self.failures} failed; " if self.failures else ""
            self.bar.set_postfix_str(failed + now, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
