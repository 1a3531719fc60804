"""Run specifications and their JSON records.

A run is fully described by a :class:`RunSpec`; its id is a stable hash of the parts that change
the result (kind, task, task overrides, optimizer, hyper-parameters, seed, budget). A finished run
is one JSON file ``<records dir>/<run id>.json``, written atomically: the JSON goes to a temporary
file in the same directory, is flushed to disk, then renamed over the final name with
:func:`os.replace`. A reader therefore sees either no record or a complete one; a leftover
temporary file (the writer was killed) is ignored and removed by :func:`clean_temp_files`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RECORDS_SUBDIR = "records"
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class RunSpec:
    """One (task variant, optimizer, hyper-parameters, seed, budget) to run.

    ``variant`` holds the hyper-parameters an experiment set on purpose (a sweep's ``p_max``, an
    ``agr_until``); with ``optimizer`` it makes the row label in the report. ``suite`` and
    ``variant`` and ``preset`` (where the hyper-parameters came from: ``"paper"`` or
    ``"tuned"``) are bookkeeping only: they are not part of the run id. ``kind`` names the executor
    (see :data:`geoptim.bench.runner.EXECUTORS`): ``"train"``, or an analysis experiment
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

    def config(self) -> dict[str, Any]:
        """The part of the spec that determines the result (hashed into the run id)."""
        return {
            "kind": self.kind,
            "task": self.task,
            "task_overrides": self.task_overrides,
            "optimizer": self.optimizer,
            "hparams": self.hparams,
            "seed": self.seed,
            "budget": self.budget,
        }

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


def versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries that shape a result."""
    import numpy
    import torch

    import geoptim

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "geoptim": geoptim.__version__,
    }


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that ``path`` is never seen half-written: a temporary file
    in the same directory, flushed to disk, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(sanitize(data), indent=1, allow_nan=False))


def write_record(out_dir: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Store a finished run's record under its run id."""
    path = record_path(out_dir, record["run_id"])
    write_json_atomic(path, record)
    return path


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or ``None`` when it is missing, unparsable or not a record."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("run_id") != path.stem:
        return None
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("result"), dict):
        return None
    return data


def is_done(out_dir: str | os.PathLike[str], run_id: str) -> bool:
    return read_record(record_path(out_dir, run_id)) is not None


def iter_records(out_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every valid record under ``out_dir``, in file-name order."""
    folder = records_dir(out_dir)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        record = read_record(path)
        if record is not None:
            yield record


def clean_temp_files(out_dir: str | os.PathLike[str]) -> int:
    """Remove temporary files left by killed writers; return how many were removed."""
    folder = records_dir(out_dir)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(f"*{TEMP_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
