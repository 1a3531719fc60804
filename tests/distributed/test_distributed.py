"""Multi-process tests (gloo, CPU): parity with single-process runs under FSDP2, HSDP, DDP and
ZeRO, collective counts, distributed checkpoints, GradScaler and bf16 mixed precision.

Each suite runs in one group of spawned processes (see :mod:`tests.distributed.harness`); every
check becomes one test here.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from tests.distributed.harness import run_suite
from tests.distributed.suites import SUITES

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    return run_suite("two", 2, tmp_path_factory.mktemp("two"))


@pytest.fixture(scope="module")
def hsdp_results(tmp_path_factory):
    return run_suite("hsdp", 4, tmp_path_factory.mktemp("hsdp"))


@pytest.fixture(scope="module")
def presence_results(tmp_path_factory):
    """A rank stuck in a collective fails after 20 s, the whole run after 5 minutes."""
    outdir = tmp_path_factory.mktemp("presence")
    return run_suite("presence", 2, outdir, collective_timeout_s=20, deadline_s=300)


def _assert_ok(outcomes: list[str]) -> None:
    failures = [f"rank {rank}:\n{o}" for rank, o in enumerate(outcomes) if o != "ok"]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("check", list(SUITES["two"]))
def test_two_processes(two_process_results, check):
    _assert_ok(two_process_results[check])


@pytest.mark.parametrize("check", list(SUITES["hsdp"]))
def test_hsdp_four_processes(hsdp_results, check):
    _assert_ok(hsdp_results[check])


@pytest.mark.parametrize("check", list(SUITES["presence"]))
def test_gradient_presence_two_processes(presence_results, check):
    _assert_ok(presence_results[check])
