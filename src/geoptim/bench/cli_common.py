"""Argument types and checks shared by the ``geoptim`` sub-commands (``bench``, ``tune``, and the
``key=value`` type of ``curvature`` and ``train``).

Every check runs before any training starts and fails with a :class:`ConfigError` that names the
bad value and the accepted ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

TaskVariant = tuple[str, dict[str, Any]]


class ConfigError(ValueError):
    """A bad command-line configuration."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def key_value(text: str) -> tuple[str, Any]:
    """argparse type: ``key=value``, the value read as JSON when it parses (``0.9``,
    ``[0.9, 0.99]``), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def parse_task(text: str) -> TaskVariant:
    """``digits`` or ``digits:model=vgg,width=32`` (values read as JSON when they parse)."""
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        try:
            key, value = key_value(item)
        except argparse.ArgumentTypeError:
            raise ConfigError(f"bad task option {item!r} in {text!r}; expected key=value") from None
        overrides[key] = value
    return name.strip(), overrides


def split_names(values: Iterable[str]) -> list[str]:
    """Names given as separate arguments and/or comma-separated."""
    return [name for value in values for name in value.split(",") if name]


def check_tasks(tasks: Iterable[TaskVariant]) -> None:
    """Every task name is known and its options build a task."""
    from geoptim.bench import tasks as registry

    known = registry.list_tasks()
    for name, overrides in tasks:
        if name not in known:
            raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
        make_task(name, overrides)


def make_task(name: str, overrides: dict[str, Any]) -> Any:
    """``get_task(name, **overrides)``, its errors as :class:`ConfigError`."""
    from geoptim.bench import tasks as registry

    try:
        return registry.get_task(name, **overrides)
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"bad task {name!r} with options {overrides}: {err}") from err


def check_optimizers(names: Iterable[str]) -> None:
    from geoptim import list_optimizers
    from geoptim.bench.presets import DEFAULT_PRESETS
    from geoptim.bench.training import BENCH_OPTIMIZERS

    known = [*list_optimizers(), *BENCH_OPTIMIZERS]
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown optimizer {name!r}; known optimizers: {', '.join(known)}")
        if name not in DEFAULT_PRESETS:
            raise ConfigError(f"optimizer {name!r} has no preset; add one in bench/presets.py")


def fail(command: str, message: str) -> int:
    """Print a configuration error the way argparse does and return exit status 2."""
    print(f"geoptim {command}: error: {message}", file=sys.stderr)
    return 2
