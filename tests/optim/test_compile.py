"""``torch.compile(opt.step)`` works from the first step, for every optimizer and implementation,
and equals eager; a tensor lr changed in place does not recompile.

The default suite compiles each optimizer's default implementation with ``backend="eager"``
(dynamo's tracing, graph breaks and guards, without code generation); ``-m slow`` adds the
foreach and for-loop implementations and the ``inductor`` backend (slow on a small CPU).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from tests.optim.cases import CASES, make_grads, make_params

#: One configuration per optimizer class, with its distinctive options.
OPTIMIZERS = [
    "lpsgd_p4",
    "lpsgdm_p6",
    "lion",
    "sepnorm_tensor",
    "ortsepnorm_global",
    "normsgd",
    "signum",
    "adan_noprox_clip",
    "adamw_agr",
    "adan_agr",
]
IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _three_steps(name: str, kwargs: dict, backend: str | None) -> list[torch.Tensor]:
    params = make_params(torch.float32)
    opt = CASES[name](params, **kwargs)
    step = opt.step if backend is None else torch.compile(opt.step, backend=backend)
    for k in range(1, 4):
        for p, g in zip(params, make_grads(k, torch.float32)):
            p.grad = g
        step()
    return [p.detach() for p in params]


def _check(name: str, impl: str, backend: str) -> None:
    eager = _three_steps(name, IMPLEMENTATIONS[impl], None)
    compiled = _three_steps(name, IMPLEMENTATIONS[impl], backend)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_compiled_step_equals_eager_from_the_first_step(name):
    _check(name, "default", "eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("impl", ["foreach", "for-loop"])
def test_compiled_step_equals_eager_every_implementation(name, impl):
    _check(name, impl, "eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inductor_compiled_step_equals_eager(name):
    _check(name, "default", "inductor")


def _train_step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss


def test_compiled_train_step_equals_eager():
    """A whole compiled train step (forward, backward, step) from a fresh optimizer."""
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = CASES["sepnorm_tensor"](model.parameters())
        step = torch.compile(_train_step, backend="eager") if compiled else _train_step
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            step(model, opt, torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen))
        results.append([p.detach() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _scheduled_run(name: str, impl: str, lrs: list[float], backend=None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in ((4, 3), (5,))]
    lr = torch.tensor(lrs[0])
    opt = CASES[name](params, **IMPLEMENTATIONS[impl])
    for group in opt.param_groups:
        group["lr"] = lr
    step = opt.step if backend is None else torch.compile(opt.step, backend=backend)
    for value in lrs:
        lr.fill_(value)  # what a torch scheduler does to a tensor lr
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        step()
    return [p.detach() for p in params]


#: In the default suite; the other optimizer x implementation pairs are slow.
FAST_SCHEDULES = {("lion", "foreach"), ("adan", "for-loop")}
SCHEDULES = [
    pytest.param(name, impl, marks=() if (name, impl) in FAST_SCHEDULES else pytest.mark.slow)
    for name in ("lion", "sepnorm_tensor", "adan")
    for impl in IMPLEMENTATIONS
]


@pytest.mark.parametrize(("name", "impl"), SCHEDULES)
def test_tensor_lr_schedule_does_not_recompile(name, impl):
    """A tensor lr moved in place compiles exactly as many frames as a constant one, and the
    compiled steps follow the schedule as eager ones do."""
    moving, constant = [0.01, 0.005, 0.002, 0.001, 0.0005], [0.01] * 5
    frames = {}
    for label, lrs in (("moving", moving), ("constant", constant)):
        torch._dynamo.reset()
        counter = CompileCounter()
        compiled = _scheduled_run(name, impl, lrs, counter)
        frames[label] = counter.frame_count
        for a, b in zip(compiled, _scheduled_run(name, impl, lrs)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert frames["moving"] == frames["constant"] > 0
