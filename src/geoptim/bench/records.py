"""Run specifications, their JSON records, and the checks a record passes before it is trusted.

A run is fully described by a :class:`RunSpec`; its id is a stable hash of the parts that change
the result (kind, task, task overrides, optimizer, hyper-parameters, seed, budget). A finished run
is one JSON file ``<records dir>/<run id>.json`` holding a :class:`Record`, written with
:func:`write_json_atomic`: the JSON goes to a temporary file in the same directory named after its
writer (host, pid, random token), is flushed to disk, then renamed over the final name with
:func:`os.replace`. A reader therefore sees either no record or a complete one; a leftover
temporary file of a dead writer is removed by :func:`clean_temp_files`, and only that.

A record is trusted when read (:func:`check_record`) only if its file name, its ``run_id`` and the
hash of its ``config`` agree (else it was edited: :data:`TAMPERED`), and it was written by this
geoptim version and record schema (else :data:`OTHER_VERSION`, accepted only on request). Which
records make up a suite is kept in ``DIR/suites/<suite>.json`` (:func:`add_to_plan`), the union of
the run ids every ``geoptim bench --suite <suite>`` on the directory planned, so a run shared by
two suites is recorded once and reported in both (:func:`select_records`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import secrets
import socket
import subprocess
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

SCHEMA_VERSION = 2
"""2: ``suite``, ``provenance`` (source hash, git commit, data hash, host) and the versions of
scikit-learn, scipy and mnist1d added to the record; 1: the first."""
RECORDS_SUBDIR = "records"
PLANS_SUBDIR = "suites"
TEMP_SUFFIX = ".tmp"
STALE_TEMP_S = 3600.0
"""A temporary file older than this is stale whoever wrote it (a record is written in well under
a second); younger, it is stale only when its writer ran on this host and is gone."""
LIBRARIES = ("torch", "numpy", "scikit-learn", "scipy", "mnist1d")
"""The libraries whose versions every record carries."""

TAMPERED = "tampered"
OTHER_VERSION = "other-version"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class RunSpec:
    """One (task variant, optimizer, hyper-parameters, seed, budget) to run.

    ``variant`` holds the hyper-parameters an experiment set on purpose (a sweep's ``p_max``, an
    ``agr_until``); with ``optimizer`` it makes the row label in the report. ``suite`` and
    ``variant`` and ``preset`` (where the hyper-parameters came from: ``"paper"`` or
    ``"tuned"``) are bookkeeping only: they are not part of the run id. ``kind`` names the run
    kind (see :data:`geoptim.bench.runner.RUN_KINDS`): ``"train"``, or an analysis experiment
    (``"curvature"``, ``"momentum_tracing"``) of the full suite.
    """

    task: str
    optimizer: str
    hparams: dict[str, Any]
    seed: int
    budget: dict[str, Any]
    task_overrides: dict[str, Any] = field(default_factory=dict)
    variant: dict[str, Any] = field(default_factory=dict)
    suite: str = ""
    preset: str = "paper"
    kind: str = "train"
    preset_provenance: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """The part of the spec that determines the result, and how its hyper-parameters were
        chosen (hashed into the run id: a preset chosen another way is another run)."""
        config = {
            "kind": self.kind,
            "task": self.task,
            "task_overrides": self.task_overrides,
            "optimizer": self.optimizer,
            "hparams": self.hparams,
            "seed": self.seed,
            "budget": self.budget,
        }
        if self.preset_provenance:
            config["preset_provenance"] = self.preset_provenance
        return config

    @property
    def run_id(self) -> str:
        return config_hash(self.config())

    @property
    def task_label(self) -> str:
        return task_label(self.task, self.task_overrides)

    @property
    def label(self) -> str:
        label = series_label(self.optimizer, self.variant)
        return f"{label} [tuned]" if self.preset == "tuned" else label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """The ``result`` of a ``"train"`` run: ``curves`` (metric -> values at the checkpoints,
    with ``step``), ``final`` (metric -> last value), ``steps`` done, and task-specific
    ``extra`` (``diverged``, ...). Other run kinds' results are their experiment's dict."""

    curves: dict[str, list[Any]]
    final: dict[str, Any]
    steps: int
    extra: dict[str, Any]


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: the geoptim source (hash of its ``.py`` files, and the git
    commit when it is a checkout), the hash of the task's data when the task gives one, and the
    host that ran it."""

    source_hash: str
    git_commit: str | None
    data_hash: str | None
    host: str


@dataclass(frozen=True)
class Record:
    """One finished run, as stored in ``<run id>.json`` (schema :data:`SCHEMA_VERSION`).

    ``versions`` holds ``python``, ``geoptim`` and :data:`LIBRARIES`; ``wall_time_s``,
    ``steps_per_s`` and ``started_at`` are timings, the only fields that differ between two
    executions of one spec on one machine.
    """

    run_id: str
    config: dict[str, Any]
    spec: dict[str, Any]
    label: str
    task_label: str
    seed: int
    suite: str
    versions: dict[str, str | None]
    provenance: Provenance
    torch_threads: int
    started_at: str
    wall_time_s: float
    steps_per_s: float | None
    result: dict[str, Any]
    schema: int = SCHEMA_VERSION

    @classmethod
    def for_run(
        cls,
        spec: RunSpec,
        result: dict[str, Any],
        *,
        data_hash: str | None,
        started_at: str,
        wall_time_s: float,
        torch_threads: int,
    ) -> Record:
        steps = int(result.get("steps") or 0)
        return cls(
            run_id=spec.run_id,
            config=spec.config(),
            spec=spec.to_dict(),
            label=spec.label,
            task_label=spec.task_label,
            seed=spec.seed,
            suite=spec.suite,
            versions=versions(),
            provenance=provenance(data_hash),
            torch_threads=torch_threads,
            started_at=started_at,
            wall_time_s=wall_time_s,
            steps_per_s=steps / wall_time_s if wall_time_s > 0 else None,
            result=result,
        )

    def to_dict(self) -> dict[str, Any]:
        """The strict-JSON form, as written (non-finite floats become ``null``)."""
        return sanitize(asdict(self))


class SchemaError(ValueError):
    """A record's JSON does not have the shape of its schema."""


def check_schema(data: dict[str, Any]) -> None:
    """Raise :class:`SchemaError` unless ``data`` has every :class:`Record` field with its type
    (and, for a ``"train"`` run, a :class:`TrainResult`)."""
    _check_fields(Record, data, "record")
    _check_fields(Provenance, data["provenance"], "provenance")
    if data["config"].get("kind", "train") == "train":
        _check_fields(TrainResult, data["result"], "result")


def _check_fields(cls: type, data: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        if item.name not in data:
            raise SchemaError(f"{where} lacks {item.name!r}")
        allowed = _json_types(hints[item.name])
        value = data[item.name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise SchemaError(f"{where}.{item.name} has type {type(value).__name__}")


def _json_types(hint: Any) -> tuple[type, ...]:
    """The JSON value types a field annotated ``hint`` may hold (a dataclass is an object)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in _json_types(arg))
    hint = typing.get_origin(hint) or hint
    if hint is float:
        return (int, float)
    if hint is type(None):
        return (type(None),)
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return (dict,)
    return (hint,)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal configs give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: dict[str, Any]) -> str:
    """A 16-hex-digit SHA-256 prefix of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def task_label(task: str, overrides: dict[str, Any]) -> str:
    """``digits`` or ``digits[model=vgg]``."""
    if not overrides:
        return task
    inner = ",".join(f"{key}={overrides[key]}" for key in sorted(overrides))
    return f"{task}[{inner}]"


def series_label(optimizer: str, variant: dict[str, Any]) -> str:
    """``lpsgdm`` or ``lpsgdm(p_max=4)``."""
    if not variant:
        return optimizer
    inner = ",".join(f"{key}={variant[key]}" for key in sorted(variant))
    return f"{optimizer}({inner})"


def geoptim_version() -> str:
    import geoptim

    return geoptim.__version__


@functools.cache
def versions() -> dict[str, str | None]:
    """Versions of the interpreter, geoptim and :data:`LIBRARIES` (``None``: not installed)."""
    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "geoptim": geoptim_version(),
    }
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@functools.cache
def source_hash() -> str:
    """SHA-256 (16 hex digits) of geoptim's Python sources: relative paths and contents."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout geoptim is imported from, or ``None`` (installed package, no
    git)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def provenance(data_hash: str | None = None) -> Provenance:
    return Provenance(
        source_hash=source_hash(),
        git_commit=git_commit(),
        data_hash=data_hash,
        host=socket.gethostname(),
    )


def sanitize(value: Any) -> Any:
    """Make ``value`` strict JSON: non-finite floats become ``None``, tuples lists, numpy
    scalars Python numbers."""
    if isinstance(value, dict):
        return {str(key): sanitize(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return sanitize(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def records_dir(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / RECORDS_SUBDIR


def record_path(out_dir: str | os.PathLike[str], run_id: str) -> Path:
    return records_dir(out_dir) / f"{run_id}.json"


# --------------------------------------------------------------------------------------------
# Atomic writes and their temporary files


def temp_name(stem: str) -> str:
    """``.<stem>~<host>~<pid>~<token>.tmp``: the writer's host and pid, so that a cleanup can
    tell a dead writer's leftover from a live writer's file in flight."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return f".{stem}~{host}~{os.getpid()}~{secrets.token_hex(4)}{TEMP_SUFFIX}"


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(handle)`` so that ``path`` is never seen half-written: ``handle`` is a new
    temporary file in the same directory (:func:`temp_name`), flushed to disk, then renamed over
    ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.stem)
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON to ``path`` atomically (see :func:`write_text_atomic`);
    the one JSON writer of the benchmark (records, presets, plans, claims tables)."""
    write_text_atomic(path, json.dumps(sanitize(data), indent=1, allow_nan=False))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """A temporary file whose writer is gone: written on this host by a pid no longer alive,
    older than :data:`STALE_TEMP_S`, or not named by :func:`temp_name` (an older writer's)."""
    parts = path.name[1 : -len(TEMP_SUFFIX)].split("~")
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_TEMP_S or len(parts) != 4 or not parts[2].isdigit():
        return True
    _, host, pid, _ = parts
    here = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return host == here and not pid_alive(int(pid))


def clean_temp_files(out_dir: str | os.PathLike[str]) -> int:
    """Remove the temporary files of dead writers anywhere under ``out_dir`` (see
    :func:`is_stale_temp`); return how many were removed."""
    removed = 0
    for path in Path(out_dir).rglob(f".*{TEMP_SUFFIX}"):
        if is_stale_temp(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# --------------------------------------------------------------------------------------------
# Writing and reading records


def write_record(out_dir: str | os.PathLike[str], record: Record | dict[str, Any]) -> Path:
    """Store a finished run's record under its run id."""
    data = record.to_dict() if isinstance(record, Record) else record
    path = record_path(out_dir, data["run_id"])
    write_json_atomic(path, data)
    return path


def check_record(data: Any, run_id: str) -> str | None:
    """Why the JSON ``data`` read from ``<run_id>.json`` is not a trusted record, or ``None``:
    :data:`UNREADABLE` (not a record), :data:`TAMPERED` (its ``run_id`` or file name does not
    match the hash of its config: edited) or :data:`OTHER_VERSION` (another geoptim version or
    record schema)."""
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        return UNREADABLE
    if not isinstance(data.get("result"), dict) or not isinstance(data.get("run_id"), str):
        return UNREADABLE
    try:
        expected = config_hash(data["config"])
    except (TypeError, ValueError):
        return UNREADABLE
    if not data["run_id"] == run_id == expected:
        return TAMPERED
    recorded = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    if data.get("schema") != SCHEMA_VERSION or recorded.get("geoptim") != geoptim_version():
        return OTHER_VERSION
    try:
        check_schema(data)
    except SchemaError:
        return UNREADABLE
    return None


def inspect_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON at ``path`` (``None`` if missing or unparsable) and :func:`check_record`'s
    verdict on it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, UNREADABLE
    return data, check_record(data, path.stem)


def read_record(path: Path, accept_other_versions: bool = False) -> dict[str, Any] | None:
    """The trusted record at ``path`` (its JSON), or ``None`` when it is missing, unparsable,
    not a record, tampered with, or (unless ``accept_other_versions``) of another version."""
    data, problem = inspect_record(path)
    if problem is None or (accept_other_versions and problem == OTHER_VERSION):
        return data
    return None


def is_done(
    out_dir: str | os.PathLike[str], run_id: str, accept_other_versions: bool = False
) -> bool:
    return read_record(record_path(out_dir, run_id), accept_other_versions) is not None


def iter_records(
    out_dir: str | os.PathLike[str], accept_other_versions: bool = False
) -> Iterator[dict[str, Any]]:
    """Every trusted record under ``out_dir`` (all suites), in file-name order."""
    folder = records_dir(out_dir)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        record = read_record(path, accept_other_versions)
        if record is not None:
            yield record


# --------------------------------------------------------------------------------------------
# Suites in a directory


def plan_path(out_dir: str | os.PathLike[str], suite: str) -> Path:
    return Path(out_dir) / PLANS_SUBDIR / f"{suite}.json"


def add_to_plan(out_dir: str | os.PathLike[str], suite: str, run_ids: list[str]) -> None:
    """Record that ``run_ids`` belong to ``suite`` (added to those planned before) and that
    ``suite`` is the one the directory was last run with."""
    path = plan_path(out_dir, suite)
    known = set(read_plans(out_dir).get(suite, {}).get("run_ids", []))
    write_json_atomic(
        path,
        {
            "suite": suite,
            "last_run_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "run_ids": sorted(known | set(run_ids)),
        },
    )


def read_plans(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Suite name -> its plan (``run_ids``, ``last_run_at``)."""
    plans = {}
    for path in sorted((Path(out_dir) / PLANS_SUBDIR).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("run_ids"), list):
            plans[path.stem] = data
    return plans


class SelectionError(ValueError):
    """The records asked for cannot be chosen (a mixed directory and no suite named)."""


@dataclass
class Selection:
    """The records of one suite that a report may use, and those left out and why."""

    suite: str
    records: list[dict[str, Any]]
    excluded: dict[str, list[str]]
    """Reason (:data:`TAMPERED`, :data:`OTHER_VERSION`, :data:`UNREADABLE`) -> file names."""

    def notes(self) -> list[str]:
        """One sentence per reason records were left out."""
        sentences = {
            TAMPERED: "whose run id does not match its config (edited?); the run is redone by "
            "the next `geoptim bench`",
            OTHER_VERSION: f"written by another geoptim version or record schema (this is "
            f"geoptim {geoptim_version()}, schema {SCHEMA_VERSION}); pass "
            "--accept-other-versions to use them",
            UNREADABLE: "that are not valid records",
        }
        return [
            f"{len(names)} record(s) left out {sentences[reason]}: {', '.join(names[:5])}"
            f"{' ...' if len(names) > 5 else ''}"
            for reason, names in self.excluded.items()
            if names
        ]


def select_records(
    out_dir: str | os.PathLike[str], suite: str | None = None, accept_other_versions: bool = False
) -> Selection:
    """The trusted records of ``suite`` in ``out_dir``.

    ``suite=None`` takes the suite the directory was last run with (the newest plan), else the
    one suite its records name; a directory whose records name several suites and that has no
    plan raises :class:`SelectionError`. A suite with a plan is its planned run ids; without
    one, the records that name it.
    """
    found: list[dict[str, Any]] = []
    excluded: dict[str, list[str]] = {TAMPERED: [], OTHER_VERSION: [], UNREADABLE: []}
    folder = records_dir(out_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data, problem = inspect_record(path)
        if problem is None or (accept_other_versions and problem == OTHER_VERSION):
            found.append(data)
        else:
            excluded[problem].append(path.name)
    plans = read_plans(out_dir)
    named = sorted({_suite_of(r) for r in found})
    if suite is None:
        if plans:
            suite = max(plans, key=lambda name: str(plans[name].get("last_run_at", "")))
        elif len(named) > 1:
            raise SelectionError(
                f"{out_dir} holds records of several suites "
                f"({', '.join(repr(n) for n in named)}); choose one with "
                "--suite NAME"
            )
        else:
            suite = named[0] if named else ""
    if suite in plans:
        members = set(plans[suite]["run_ids"])
        chosen = [r for r in found if r["run_id"] in members]
    else:
        chosen = [r for r in found if _suite_of(r) == suite]
    return Selection(suite, chosen, excluded)


def _suite_of(record: dict[str, Any]) -> str:
    suite = record.get("suite", (record.get("spec") or {}).get("suite", ""))
    return suite if isinstance(suite, str) else ""
