"""Where runs execute: a local process pool (the default) or a Ray cluster.

An executor runs calls ``fn(*args)`` and hands back each one's result as it finishes
(:meth:`Executor.next_done`); it knows nothing of benchmark runs. It reports a call whose worker
died (killed, out of memory, node lost) as ``crashed`` so the runner can re-run it, and a call that
raised as ``error`` (its traceback). ``slots`` is how many calls it runs at once; the runner keeps
that many in flight.

:class:`LocalExecutor` runs them in forked worker processes (or, with one worker, in this
process), ``threads`` torch threads each; a worker whose parent died exits within a second.
:class:`RayExecutor` makes each call one Ray task declaring its resources (``cpus`` CPUs and as
many torch threads; one GPU where the run wants one and the cluster has GPUs, or ``gpus``), so
Ray schedules one run per GPU (or per CPU) across the nodes; Ray is the optional extra
``geoptim[cluster]``.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import traceback
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

EXECUTOR_NAMES = ("local", "ray")


class ExecutorError(RuntimeError):
    """An executor cannot be made (Ray missing, cluster unreachable): a user error."""


@dataclass
class Done:
    """One finished call: its key, and its value, or the error / crash that ended it."""

    key: Hashable
    value: Any = None
    error: str | None = None
    crashed: bool = False


class Executor(Protocol):
    slots: int
    threads_per_run: int | None
    """Torch threads a call should set for itself (``None``: the executor sets them)."""

    def submit(self, key: Hashable, fn: Callable[..., Any], *args: Any, gpu: bool = False) -> None:
        """Start ``fn(*args)``; ``gpu``: the call can use a GPU."""

    def next_done(self) -> Done:
        """Block until a submitted call finishes."""

    def close(self) -> None: ...


def _watch_parent(parent: int) -> None:
    """In a pool worker: exit when the parent is gone (the suite was killed), rather than
    finish a run nobody waits for."""
    while True:
        threading.Event().wait(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class LocalExecutor:
    """``workers`` processes on this machine (forked where possible), or this process when
    ``workers == 1``; ``threads`` torch threads each."""

    threads_per_run = None

    def __init__(self, workers: int = 1, threads: int = 1) -> None:
        self.slots = max(1, workers)
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[Future[Any], Hashable] = {}
        self._here: deque[tuple[Hashable, Callable[..., Any], tuple[Any, ...]]] = deque()

    def submit(self, key: Hashable, fn: Callable[..., Any], *args: Any, gpu: bool = False) -> None:
        if self.slots == 1:
            self._here.append((key, fn, args))
            return
        if self._pool is None:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                max_workers=self.slots,
                mp_context=multiprocessing.get_context(method),
                initializer=_init_worker,
                initargs=(self.threads, os.getpid()),
            )
        self._running[self._pool.submit(fn, *args)] = key

    def next_done(self) -> Done:
        if self._here:
            return self._run_here(*self._here.popleft())
        done, _ = wait(self._running, return_when=FIRST_COMPLETED)
        future = next(iter(done))
        key = self._running.pop(future)
        try:
            return Done(key, future.result())
        except (BrokenProcessPool, CancelledError) as err:  # a worker died: all calls lost
            self._drop_pool()
            return Done(key, error=f"worker died: {err!r}", crashed=True)
        except Exception:
            return Done(key, error=traceback.format_exc(limit=8))

    def _run_here(self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...]) -> Done:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return Done(key, fn(*args))
        except Exception:
            return Done(key, error=traceback.format_exc(limit=8))
        finally:
            torch.set_num_threads(previous)

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class RayExecutor:
    """Each call one Ray task with ``num_cpus=cpus`` (and ``cpus`` torch threads) and
    ``num_gpus`` = ``gpus``, or, when ``gpus`` is ``None``, 1 for a call that can use a GPU on a
    cluster that has GPUs and 0 otherwise.

    Connects to the cluster at ``address`` (``HOST:PORT``, or ``"auto"``), or, with none, starts
    a local one; an already initialised Ray (``ray.init`` by the caller) is used as it is. Ray's
    own task retries are off: the runner decides what is re-run.
    """

    def __init__(self, address: str | None = None, cpus: int = 1, gpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: install geoptim[cluster]") from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ExecutorError(
                    f"cannot connect to the Ray cluster at {address}: {err}"
                ) from err
        self.cpus, self.gpus = cpus, gpus
        self.threads_per_run = cpus
        total = ray.cluster_resources()
        self.cluster_gpus = int(total.get("GPU", 0))
        self.slots = max(1, int(total.get("CPU", 1) // cpus))
        if self.cluster_gpus and gpus != 0:
            self.slots = max(1, min(self.slots, self.cluster_gpus // max(gpus or 1, 1)))
        self._task = ray.remote(_call)
        self._running: dict[Any, Hashable] = {}

    def submit(self, key: Hashable, fn: Callable[..., Any], *args: Any, gpu: bool = False) -> None:
        gpus = self.gpus if self.gpus is not None else int(gpu and self.cluster_gpus > 0)
        ref = self._task.options(num_cpus=self.cpus, num_gpus=gpus, max_retries=0).remote(fn, *args)
        self._running[ref] = key

    def next_done(self) -> Done:
        exceptions = self._ray.exceptions
        (ref,), _ = self._ray.wait(list(self._running), num_returns=1)
        key = self._running.pop(ref)
        try:
            return Done(key, self._ray.get(ref))
        except exceptions.RayTaskError as err:
            return Done(key, error=str(err))
        except exceptions.RayError as err:  # worker or node died, object lost
            return Done(key, error=f"{type(err).__name__}: {err}", crashed=True)

    def close(self) -> None:
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
