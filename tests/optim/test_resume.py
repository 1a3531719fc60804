"""Checkpoint/resume: 10 steps + save + load into fresh objects + 10 steps == 20 steps, exactly."""

import io

import pytest
import torch

import geoptim


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _batch(step):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(16, 5, generator=gen), torch.randint(0, 2, (16,), generator=gen)


def _build(name, model):
    opt = geoptim.create_optimizer(model, name, lr=1e-2, weight_decay=0.01)
    has_p = "p" in opt.param_groups[0]
    sched = geoptim.CosinePScheduler(opt, p_max=6.0, T_max=15) if has_p else None
    lr_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    return opt, sched, lr_sched


def _train(model, opt, sched, lr_sched, steps):
    for step in steps:
        x, y = _batch(step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        lr_sched.step()
        if sched is not None:
            sched.step()


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", geoptim.list_optimizers())
def test_resume_is_bit_exact(name):
    model = _model()
    opt, sched, lr_sched = _build(name, model)
    _train(model, opt, sched, lr_sched, range(20))

    first = _model()
    opt1, sched1, lr1 = _build(name, first)
    _train(first, opt1, sched1, lr1, range(10))
    saved = _roundtrip(
        {
            "model": first.state_dict(),
            "opt": opt1.state_dict(),
            "sched": sched1.state_dict() if sched1 else None,
            "lr": lr1.state_dict(),
        }
    )
    resumed = _model()
    opt2, sched2, lr2 = _build(name, resumed)
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    lr2.load_state_dict(saved["lr"])
    if sched2:
        sched2.load_state_dict(saved["sched"])
    _train(resumed, opt2, sched2, lr2, range(10, 20))

    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for (ka, va), (kb, vb) in zip(
        opt.state_dict()["state"].items(), opt2.state_dict()["state"].items()
    ):
        assert ka == kb
        for key in va:
            assert torch.equal(va[key], vb[key]), key
    assert opt.state_dict()["param_groups"] == opt2.state_dict()["param_groups"]
