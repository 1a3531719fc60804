"""Exact identities between methods (ALGORITHMS.md §1-§2)."""

import itertools
import math

import pytest
import torch

import geoptim
from tests.optim.cases import make_params, run_steps

STEPS = range(1, 11)


def _pair(make_a, make_b, steps=STEPS):
    a, b = make_params(), make_params()
    run_steps(make_a(a), a, steps)
    run_steps(make_b(b), b, steps)
    return a, b


@pytest.mark.parametrize("foreach", [False, True])
def test_lpsgd_p2_is_sgd(foreach):
    a, b = _pair(
        lambda ps: geoptim.LPSGD(ps, lr=0.1, p=2.0, foreach=foreach),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
    )
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("foreach", [False, True])
def test_lpsgdm_p2_heavy_ball_is_sgd_momentum(foreach):
    """Heavy-ball LPSGDM's buffer starts at 0, so m_1 = g_1: torch's first-step
    initialisation ``buf = g`` gives the same sequence."""
    a, b = _pair(
        lambda ps: geoptim.LPSGDM(ps, lr=0.1, momentum=0.9, dampening=0, p=2.0, foreach=foreach),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    )
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)


def test_lpsgdm_p2_ema_is_sgd_momentum_with_scaled_lr():
    """EMA momentum m = (1-beta) * heavy-ball buffer, so LPSGDM(lr) = SGD(lr*(1-beta))."""
    a, b = _pair(
        lambda ps: geoptim.LPSGDM(ps, lr=0.1, momentum=0.9, p=2.0),
        lambda ps: torch.optim.SGD(ps, lr=0.1 * (1 - 0.9), momentum=0.9),
    )
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_sepnorm_element_grouping_is_lion():
    a, b = _pair(
        lambda ps: geoptim.SepNorm(ps, lr=0.01, grouping="element", eps=1e-30, weight_decay=0.1),
        lambda ps: geoptim.Lion(ps, lr=0.01, weight_decay=0.1),
    )
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


def test_sepnorm_global_grouping_is_normsgd():
    """One normalisation group of N elements: SepNorm(lr) = NormSGD(lr * sqrt(N)). (Steps
    from 4 on: at step 3 a gradient is missing, which changes N for that step.)"""
    n = sum(p.numel() for p in make_params())
    a, b = _pair(
        lambda ps: geoptim.SepNorm(ps, lr=0.01, grouping="global", weight_decay=0.1),
        lambda ps: geoptim.NormSGD(ps, lr=0.01 * math.sqrt(n), weight_decay=0.1 / math.sqrt(n)),
        steps=range(4, 14),
    )
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


def test_lpsgdm_approaches_signum_as_p_grows():
    reference = make_params()
    run_steps(geoptim.Signum(reference, lr=0.01, momentum=0.9), reference, STEPS)
    errors = []
    for p in (4.0, 20.0, 1e3, 1e6, math.inf):
        ps = make_params()
        run_steps(geoptim.LPSGDM(ps, lr=0.01, momentum=0.9, p=p, eps=1e-12), ps, STEPS)
        errors.append(max(float((x - y).detach().abs().sum()) for x, y in zip(ps, reference)))
    assert all(e1 > e2 for e1, e2 in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-9, errors  # p = inf: u / (|u| + eps)


def test_signum_zero_momentum_is_sign_sgd():
    a = make_params()
    b = [p.detach().clone() for p in a]
    run_steps(geoptim.Signum(a, lr=0.01, momentum=0.0), a, range(1, 2))
    from tests.optim.cases import make_grads

    for x, y, g in zip(a, b, make_grads(1)):
        torch.testing.assert_close(x, y - 0.01 * g.sign(), rtol=0, atol=1e-15)


def _adan_agr_first_by_hand(w, grads, lr, betas, eps, weight_decay, max_grad_norm):
    """AGR's first-moment variant of Adan, transcribed from the AGR paper's prose and Adan's
    reference code: only m averages Psi(g); d, n and the previous gradient see the clipped g."""
    b1, b2, b3 = betas
    m, d, n, previous = torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w), None
    for t, g in enumerate(grads, start=1):
        norm = g.norm()
        g = g * (min(1.0, max_grad_norm / (norm + eps)) if max_grad_norm else 1.0)
        psi = g - g.abs() / g.abs().sum() * g
        previous = g if previous is None else previous
        diff = g - previous
        m = b1 * m + (1 - b1) * psi
        d = b2 * d + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + b2 * diff) ** 2
        denom = n.sqrt() / math.sqrt(1 - b3**t) + eps
        w = w - lr / (1 - b1**t) * m / denom - lr * b2 / (1 - b2**t) * d / denom
        w = w / (1 + lr * weight_decay)
        previous = g
    return w


@pytest.mark.parametrize("kw", [{"foreach": False}, {"foreach": True}, {}])
@pytest.mark.parametrize("max_grad_norm", [0.0, 0.5])
def test_adan_agr_first_moment_variant_matches_hand_transcription(kw, max_grad_norm):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(7, generator=gen, dtype=torch.float64)
    grads = [torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(5)]
    hyper = {"lr": 0.01, "betas": (0.9, 0.92, 0.99), "eps": 1e-8, "weight_decay": 0.02}
    p = w0.clone().requires_grad_()
    opt = geoptim.AdanAGR([p], moments="first", max_grad_norm=max_grad_norm, **hyper, **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        assert torch.equal(p.grad, g)  # the user's gradient is untouched
    expected = _adan_agr_first_by_hand(w0, grads, max_grad_norm=max_grad_norm, **hyper)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)
    # the official variant (every moment sees Psi) differs
    q = w0.clone().requires_grad_()
    both = geoptim.AdanAGR([q], max_grad_norm=max_grad_norm, **hyper, **kw)
    for g in grads:
        q.grad = g.clone()
        both.step()
    assert (q - p).abs().max() > 1e-6


def test_adan_agr_moments_is_checked_and_saved():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="moments"):
        geoptim.AdanAGR([p], moments="second")
    opt = geoptim.AdanAGR([p], moments="first")
    assert opt.state_dict()["param_groups"][0]["moments"] == "first"


def _adamw_agr_first_by_hand(w, grads, lr, betas, eps, weight_decay):
    """AGR's first-moment variant of AdamW, transcribed from the paper's prose: m averages
    Psi(g), v the raw g^2; bias-corrected AdamW step with decoupled decay."""
    b1, b2 = betas
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        psi = g - g.abs() / g.abs().sum() * g
        w = w * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * psi
        v = b2 * v + (1 - b2) * g * g
        w = w - lr / (1 - b1**t) * m / (v.sqrt() / math.sqrt(1 - b2**t) + eps)
    return w


@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_agr_first_moment_variant_matches_hand_transcription(foreach):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(7, generator=gen, dtype=torch.float64)
    grads = [torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(5)]
    hyper = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
    p = w0.clone().requires_grad_()
    opt = geoptim.AdamWAGR([p], moments="first", foreach=foreach, **hyper)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        assert torch.equal(p.grad, g)
    expected = _adamw_agr_first_by_hand(w0, grads, **hyper)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("options", [{}, {"amsgrad": True, "maximize": True}])
def test_adamw_two_gradient_kernel_equals_torch_adamw_when_the_gradients_are_equal(
    foreach, options
):
    """With AGR switched off (agr_until=0) both gradients are g: the two-gradient kernel is
    torch's AdamW, on params and on state (the same state layout)."""
    runs = []
    for make in (
        lambda ps: geoptim.AdamWAGR(ps, moments="first", agr_until=0, foreach=foreach, **options),
        lambda ps: torch.optim.AdamW(ps, foreach=False, **options),
    ):
        params = make_params()
        opt = make([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.3}])
        run_steps(opt, params, STEPS)
        runs.append((params, opt))
    (ours, opt_ours), (theirs, opt_theirs) = runs
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    for a, b in zip(ours, theirs):
        for key, value in opt_theirs.state[b].items():
            torch.testing.assert_close(opt_ours.state[a][key], value, rtol=1e-13, atol=1e-15)


def test_adamw_agr_moments_first_has_no_fused_path():
    with pytest.raises(ValueError, match="moments='first'"):
        geoptim.AdamWAGR([torch.zeros(2, requires_grad=True)], moments="first", fused=True)
