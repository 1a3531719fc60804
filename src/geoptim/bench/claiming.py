"""Claim files: which worker is running which run, safe on shared (network) storage.

A run is claimed by creating ``DIR/claims/<run id>.claim`` with ``O_CREAT | O_EXCL`` (atomic on
local and network file systems, where ``flock`` may not be), holding the claimant's host, pid,
start time and a token. While the run goes on, the claimant touches the file every
``heartbeat_s`` (:func:`heartbeat`). A claim is stale when its worker is gone: its pid is dead and
it is on this host, or its last heartbeat is older than ``timeout_s`` (any host). A stale claim is
taken over by the one claimant that creates ``<run id>.claim.break-<token>`` first (``O_EXCL``
again), so two drivers never both take it over.

The protocol's rule is: a claim is released only after the run's record is written, and a
claimant checks for the record after it holds the claim. Hence a finished run is never run
again, and of two racing claimants exactly one runs an unfinished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from geoptim.bench.records import pid_alive, temp_name

CLAIMS_SUBDIR = "claims"
CLAIM_TIMEOUT_S = 600.0
"""A claim whose heartbeat is older than this is stale (its worker is presumed dead)."""
HEARTBEAT_S = 30.0


@dataclass(frozen=True)
class Claim:
    """Who holds a run: written as JSON into the claim file."""

    run_id: str
    host: str
    pid: int
    started_at: float
    token: str


def new_token() -> str:
    return secrets.token_hex(8)


def claim_path(out_dir: str | os.PathLike[str], run_id: str) -> Path:
    return Path(out_dir) / CLAIMS_SUBDIR / f"{run_id}.claim"


def read_claim(path: Path) -> Claim | None:
    try:
        return Claim(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def is_stale(path: Path, claim: Claim | None, timeout_s: float = CLAIM_TIMEOUT_S) -> bool:
    """Whether the claim at ``path`` (read as ``claim``; ``None``: unreadable) has lost its
    worker. A claim being written (created but still empty) is young, hence not stale."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > timeout_s:
        return True
    return claim is not None and claim.host == socket.gethostname() and not pid_alive(claim.pid)


def is_held(
    out_dir: str | os.PathLike[str], run_id: str, timeout_s: float = CLAIM_TIMEOUT_S
) -> bool:
    """Whether a live claimant holds ``run_id``."""
    path = claim_path(out_dir, run_id)
    return path.exists() and not is_stale(path, read_claim(path), timeout_s)


def try_claim(
    out_dir: str | os.PathLike[str],
    run_id: str,
    token: str | None = None,
    timeout_s: float = CLAIM_TIMEOUT_S,
) -> Claim | None:
    """Claim ``run_id`` for this process; ``None`` when another live claimant holds it.

    The caller must then check that the run has no record yet (and :func:`release` if it has).
    """
    claim = Claim(run_id, socket.gethostname(), os.getpid(), time.time(), token or new_token())
    path = claim_path(out_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(asdict(claim)).encode()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return _take_over(path, claim, body, timeout_s)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    return claim


def _take_over(path: Path, claim: Claim, body: bytes, timeout_s: float) -> Claim | None:
    held = read_claim(path)
    if not is_stale(path, held, timeout_s):
        return None
    breaker = path.with_name(f"{path.name}.break-{held.token if held else 'unreadable'}")
    try:
        os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return None  # another claimant is taking this stale claim over
    now = read_claim(path)
    if (now.token if now else None) != (held.token if held else None):
        return None  # changed hands in between
    tmp = path.with_name(temp_name(path.stem))
    tmp.write_bytes(body)
    os.replace(tmp, path)
    return claim


def release(out_dir: str | os.PathLike[str], claim: Claim) -> None:
    """Remove ``claim`` (and its take-over markers) if this claimant still holds it."""
    path = claim_path(out_dir, claim.run_id)
    held = read_claim(path)
    if held is not None and held.token == claim.token:
        path.unlink(missing_ok=True)
        for marker in path.parent.glob(f"{path.name}.break-*"):
            marker.unlink(missing_ok=True)


def break_claim(out_dir: str | os.PathLike[str], run_id: str, token: str) -> None:
    """Remove the claim of ``run_id`` if it holds ``token``: the driver knows that worker
    died (so the run's re-run need not wait for the claim to time out)."""
    held = read_claim(claim_path(out_dir, run_id))
    if held is not None and held.token == token:
        release(out_dir, held)


@contextlib.contextmanager
def heartbeat(
    out_dir: str | os.PathLike[str], claim: Claim, every_s: float = HEARTBEAT_S
) -> Iterator[None]:
    """Touch the claim file every ``every_s`` seconds while the block runs."""
    path = claim_path(out_dir, claim.run_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name=f"claim-{claim.run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
