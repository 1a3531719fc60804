"""Argument types and checks shared by the ``geoptim`` sub-commands.

Every check runs before any work starts and fails with a :class:`ConfigError` that names the bad
value and the accepted ones; :func:`geoptim.cli.main` prints it as one line
``geoptim: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from geoptim.bench.executors import (
    EXECUTOR_NAMES,
    Executor,
    ExecutorError,
    LocalExecutor,
    RayExecutor,
)

TaskVariant = tuple[str, dict[str, Any]]


class ConfigError(ValueError):
    """A bad command-line configuration (a user error, reported without a traceback)."""


# ---------------------------------------------------------------- argparse types


def _number(parse: Callable[[str], Any], what: str, holds: Callable[[Any], bool]) -> Any:
    """An argparse type: ``parse(text)``, finite, with ``holds(value)``; else an error that
    names ``what`` was expected."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and holds(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return convert


def int_at_least(low: int, what: str | None = None) -> Callable[[str], int]:
    """argparse type: an integer ``>= low``."""
    return _number(int, what or f"an integer >= {low}", lambda v: v >= low)


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0)
positive_float = _number(float, "a positive number", lambda v: v > 0)
non_negative_float = _number(float, "a finite number >= 0", lambda v: v >= 0)


def key_value(text: str) -> tuple[str, Any]:
    """argparse type: ``key=value``, the value read as JSON when it parses (``0.9``,
    ``[0.9, 0.99]``), else kept as a string. For hyper-parameters; task options use
    :func:`key_text` (their declared types read them)."""
    key, raw = key_text(text)
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def key_text(text: str) -> tuple[str, str]:
    """argparse type: ``key=value`` with the value kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), raw


# ---------------------------------------------------------------- tasks


def _split_commas(text: str) -> Iterator[str]:
    """``text`` split at the commas outside brackets (``w0=[1,2],problem=weak``: two items)."""
    depth, start = 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def split_names(values: Iterable[str]) -> list[str]:
    """Names given as separate arguments and/or comma-separated."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def split_tasks(values: Iterable[str]) -> list[str]:
    """The tasks named by ``--tasks`` arguments: ``digits:model=vgg,width=32,mnist1d`` is two
    tasks (an item ``key=value`` continues the task before it in the same argument)."""
    tasks: list[str] = []
    for value in values:
        named: list[str] = []
        for item in filter(None, (part.strip() for part in _split_commas(value))):
            if "=" not in item or ":" in item.partition("=")[0]:
                named.append(item)
            elif named:
                named[-1] += ("," if ":" in named[-1] else ":") + item
            else:
                raise ConfigError(f"task option {item!r} follows no task (e.g. digits:{item})")
        tasks += named
    if not tasks:
        raise ConfigError("--tasks names no task")
    return tasks


def parse_task(text: str) -> TaskVariant:
    """``digits`` or ``digits:model=vgg,width=32`` as ``(name, {option: text})``."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, _split_commas(rest)):
        try:
            key, value = key_text(item)
        except argparse.ArgumentTypeError:
            raise ConfigError(f"bad task option {item!r} in {text!r}; expected key=value") from None
        if key in options:
            raise ConfigError(f"task option {key!r} given twice in {text!r}")
        options[key] = value
    return name.strip(), options


def check_task(name: str, options: dict[str, Any]) -> TaskVariant:
    """``(name, options)`` with the options as their declared types
    (:func:`geoptim.bench.tasks.base.check_options`); :class:`ConfigError` for an unknown task or
    a bad option."""
    from geoptim.bench import tasks as registry

    known = registry.list_tasks()
    if name not in known:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    task_class = type(make_task(name, {}))  # where the task's options are declared
    try:
        return name, registry.check_options(task_class, options)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def task_variant(text: str) -> TaskVariant:
    """``digits:width=32`` parsed and checked (:func:`parse_task`, :func:`check_task`)."""
    return check_task(*parse_task(text))


def make_task(name: str, overrides: dict[str, Any]) -> Any:
    """``get_task(name, **overrides)``, its errors as :class:`ConfigError`."""
    from geoptim.bench import tasks as registry

    try:
        return registry.get_task(name, **overrides)
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"bad task {name!r} with options {overrides}: {err}") from err


def task_data(task: Any, seed: int) -> Any:
    """``task.make_data(seed)``; data that is not there (a CIFAR folder) is a
    :class:`ConfigError`."""
    try:
        return task.make_data(seed)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None


# ---------------------------------------------------------------- optimizers


def check_optimizers(names: Iterable[str], need_preset: bool = True) -> None:
    """Every name is registered (and, for the benchmark, has a preset)."""
    from geoptim import list_optimizers
    from geoptim.bench.presets import DEFAULT_PRESETS
    from geoptim.bench.training import BENCH_OPTIMIZERS

    known = [*list_optimizers(), *BENCH_OPTIMIZERS]
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown optimizer {name!r}; known optimizers: {', '.join(known)}")
        if need_preset and name not in DEFAULT_PRESETS:
            raise ConfigError(f"optimizer {name!r} has no preset; add one in bench/presets.py")


def check_hparams(optimizer: str, hparams: dict[str, Any]) -> None:
    """``hparams`` build ``optimizer`` and its schedules (built once on a dummy parameter, so
    unknown keywords and out-of-range values fail here, not in a run); every number finite."""
    import torch

    from geoptim.bench.training import setup_optimizer

    check_optimizers([optimizer], need_preset=False)
    for key, value in hparams.items():
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
            raise ConfigError(f"hyper-parameter {key} must be finite, got {value!r}")
    try:
        setup_optimizer([torch.zeros(2, 2, requires_grad=True)], optimizer, hparams, 1, 1)
    except (TypeError, ValueError, LookupError, RuntimeError) as err:
        raise ConfigError(f"bad hyper-parameters for {optimizer} {hparams}: {err}") from None


# ---------------------------------------------------------------- output


def writable_dir(path: str | os.PathLike[str], *, create: bool = True, what: str = "--out") -> Path:
    """``path`` as a directory this process can write, checked before any work.

    With ``create``, the directory is created (with its parents) and a small file is written,
    synced and removed there, so that a file in the way, a read-only place or a full disk is
    found now. Without (a dry run), nothing is created: the nearest existing ancestor must be a
    writable directory.
    """
    if not os.fspath(path):
        raise ConfigError(f"{what} is empty")
    _check_dir(Path(path), create, f"{what} {path}")
    return Path(path)


def writable_file(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` as a file this process can write later: not a directory, in a directory that is
    created and test-written now (:func:`writable_dir`)."""
    if not os.fspath(path):
        raise ConfigError(f"{what} is empty")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; expected a file name")
    _check_dir(path.parent, True, f"{what} {path}")
    return path


def _check_dir(path: Path, create: bool, label: str) -> None:
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not ancestor.is_dir():
        raise ConfigError(f"{label}: {ancestor} is a file, not a directory")
    if not create:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(f"{label}: {ancestor} is not writable")
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".geoptim-probe-") as probe:
            probe.write(b"geoptim\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise ConfigError(f"cannot write to {label}: {err.strerror or err}") from None


# ---------------------------------------------------------------- executors (bench, tune)


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--address``, ``--cpus-per-run``, ``--gpus-per-run`` (bench, tune)."""
    parser.add_argument(
        "--executor",
        choices=EXECUTOR_NAMES,
        default="local",
        help="local: a process pool on this machine (default); ray: one Ray "
        "task per run on a Ray cluster (needs geoptim[cluster])",
    )
    parser.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="the Ray cluster to join (default: RAY_ADDRESS, else a local Ray)",
    )
    parser.add_argument(
        "--cpus-per-run",
        type=positive_int,
        default=1,
        metavar="N",
        help="CPUs (and torch threads) per run (default 1)",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=int,
        metavar="N",
        help="Ray only: GPUs per run (default: 1 for a task on a GPU device "
        "when the cluster has GPUs, else 0)",
    )


def make_executor(args: argparse.Namespace, workers: int) -> Executor:
    """The executor the arguments of :func:`add_executor_arguments` ask for; ``workers``: the
    local pool's size. Raises :class:`ExecutorError`."""
    if args.executor == "ray":
        if args.gpus_per_run is not None and args.gpus_per_run < 0:
            raise ExecutorError(f"--gpus-per-run must be >= 0, got {args.gpus_per_run}")
        return RayExecutor(args.address, args.cpus_per_run, args.gpus_per_run)
    if args.address is not None:
        raise ExecutorError("--address needs --executor ray")
    return LocalExecutor(workers, args.cpus_per_run)
