"""The analysis tests run their many tiny Hessian-vector products on one thread: on a shared
2-core machine, thread start-up and contention cost more than the products themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
