"""Run many distributed checks in one group of spawned gloo processes.

Starting a process group costs seconds (importing torch in every process), so one group runs
every check of a suite, one after the other, and writes each check's outcome (``"ok"`` or the
traceback) per rank to a JSON file; the pytest side turns each check into a test. A barrier
after each check keeps the ranks in step; the group's collective timeout turns a rank stuck in
a collective into a failure rather than a hang, and a deadline on the whole run kills the
processes of a suite that still does not finish.
"""

from __future__ import annotations

import json
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, suite: str, outdir: str, timeout_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    from tests.distributed import checks

    results: dict[str, str] = {}
    for name, check in checks.suite(suite).items():
        try:
            check(Path(outdir))
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
        dist.barrier()
    Path(outdir, f"{suite}-rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def run_suite(
    suite: str,
    world: int,
    outdir: Path,
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
    deadline_s: float = 900,
) -> dict[str, list[str]]:
    """Run suite ``suite`` on ``world`` processes; each check's outcome on every rank. A
    collective waits at most ``collective_timeout_s``, the whole run ``deadline_s``."""
    args = (world, free_port(), suite, str(outdir), collective_timeout_s)
    context = mp.start_processes(_worker, args=args, nprocs=world, join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"suite {suite!r} did not finish in {deadline_s} s")
    per_rank = [
        json.loads((outdir / f"{suite}-rank{rank}.json").read_text()) for rank in range(world)
    ]
    return {name: [ranks[name] for ranks in per_rank] for name in per_rank[0]}
