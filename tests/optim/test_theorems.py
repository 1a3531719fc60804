"""Theorems of the SepNorm paper (ALGORITHMS.md §2) as checks."""

import math

import pytest
import torch

import geoptim


def _mlp_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model.double()
    x = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=gen)
    return model, x, y


@pytest.mark.parametrize("foreach", [False, True])
def test_ortsepnorm_norms_converge_to_the_fixed_point(foreach):
    lr, wd = 0.02, 0.5  # lr*wd = 0.01: the norm's error contracts by ~0.98 per step
    model, x, y = _mlp_problem()
    opt = geoptim.OrtSepNorm(model.parameters(), lr=lr, weight_decay=wd, foreach=foreach)
    prev = None
    for _ in range(1200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        norms_before = [p.detach().norm() ** 2 for p in model.parameters()]
        opt.step()
        prev = norms_before
    # One-step identity: ||w'||^2 = (1 - lr wd)^2 ||w||^2 + lr^2 n (update orthogonal, norm sqrt(n))
    for p, before in zip(model.parameters(), prev):
        expected = (1 - lr * wd) ** 2 * before + lr**2 * p.numel()
        torch.testing.assert_close(p.detach().norm() ** 2, expected, rtol=1e-6, atol=0)
    for p in model.parameters():
        fixed_point = lr * math.sqrt(p.numel()) / math.sqrt(2 * lr * wd - (lr * wd) ** 2)
        assert abs(p.detach().norm().item() / fixed_point - 1) < 0.01


def _quadratic_tail_max(opt_cls, A, lr, steps=4000, tail=200, **kw):
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = opt_cls([w], lr=lr, **kw)
    losses = []
    for _ in range(steps):
        loss = 0.5 * w @ A @ w
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return max(losses[-tail:]), losses[0]


@pytest.mark.parametrize("lr", [0.05, 0.01])
def test_normalized_gd_oscillation_lower_bound(lr):
    """Normalized GD (no momentum) on 0.5 w^T A w: max tail loss >= lr^2 lambda_max / 8."""
    A = torch.diag(torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64))
    tail, first = _quadratic_tail_max(geoptim.NormSGD, A, lr, betas=(0.0, 0.0), eps=0.0)
    bound = lr**2 * 4.0 / 8
    assert tail >= bound
    assert tail < first / 100  # it did converge down to the oscillation regime


@pytest.mark.parametrize("lr", [0.05, 0.01])
def test_sign_gd_oscillation_lower_bound(lr):
    """signGD on a diagonal quadratic: max tail loss >= lr^2 trace(A) / 8."""
    A = torch.diag(torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64))
    tail, first = _quadratic_tail_max(geoptim.Signum, A, lr, momentum=0.0)
    bound = lr**2 * float(A.trace()) / 8
    assert tail >= bound
    assert tail < first / 100
