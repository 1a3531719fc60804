"""geoptim against independent implementations: installed packages and the rules of
ALGORITHMS.md written out here, plainly, one formula per line."""

import math

import pytest
import torch

import geoptim
from tests.optim.cases import make_grads, make_params

STEPS = range(1, 13)


def _drive(opt, params, grads_for_step):
    for step in STEPS:
        for p, g in zip(params, grads_for_step(step)):
            p.grad = None if g is None else g.clone()
        opt.step()


def _grads(step):
    """make_grads with the missing gradient replaced by zeros (the oracles need every one)."""
    return [
        g if g is not None else torch.zeros(p.shape, dtype=p.dtype)
        for g, p in zip(make_grads(step), make_params())
    ]


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
@pytest.mark.parametrize("oracle", ["lion_pytorch", "pytorch_optimizer"])
def test_lion_matches_installed_implementations(oracle, weight_decay):
    if oracle == "lion_pytorch":
        from lion_pytorch import Lion as Oracle

        def make(ps):
            return Oracle(ps, lr=0.01, betas=(0.9, 0.99), weight_decay=weight_decay)
    else:
        from pytorch_optimizer import Lion as Oracle

        def make(ps):
            return Oracle(
                ps, lr=0.01, betas=(0.9, 0.99), weight_decay=weight_decay, weight_decouple=True
            )

    ours, theirs = make_params(), make_params()
    _drive(geoptim.Lion(ours, lr=0.01, weight_decay=weight_decay), ours, _grads)
    _drive(make(theirs), theirs, _grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def adan_reference(params, grads_per_step, lr, betas, eps, wd, no_prox, max_grad_norm):
    """ALGORITHMS.md §3, written independently of geoptim.adan."""
    b1, b2, b3 = betas
    w = [p.detach().clone() for p in params]
    m = [torch.zeros_like(x) for x in w]
    d = [torch.zeros_like(x) for x in w]
    n = [torch.zeros_like(x) for x in w]
    prev = [None] * len(w)
    for t, raw in enumerate(grads_per_step, start=1):
        if max_grad_norm > 0:
            total = math.sqrt(sum(float((g**2).sum()) for g in raw))
            clip = min(1.0, max_grad_norm / (total + eps))
        else:
            clip = 1.0
        for i, g_raw in enumerate(raw):
            g = g_raw * clip
            d_g = torch.zeros_like(g) if prev[i] is None else g - prev[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            d[i] = b2 * d[i] + (1 - b2) * d_g
            n[i] = b3 * n[i] + (1 - b3) * (g + b2 * d_g) ** 2
            denom = n[i].sqrt() / math.sqrt(1 - b3**t) + eps
            if no_prox:
                w[i] = w[i] * (1 - lr * wd)
            w[i] = w[i] - lr / (1 - b1**t) * m[i] / denom - lr * b2 / (1 - b2**t) * d[i] / denom
            if not no_prox:
                w[i] = w[i] / (1 + lr * wd)
            prev[i] = g
    return w


ADAN_SETTINGS = [
    {"wd": 0.0, "no_prox": False, "max_grad_norm": 0.0},
    {"wd": 0.05, "no_prox": False, "max_grad_norm": 0.0},
    {"wd": 0.05, "no_prox": True, "max_grad_norm": 0.0},
    {"wd": 0.05, "no_prox": False, "max_grad_norm": 1.0},
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("setting", ADAN_SETTINGS)
def test_adan_matches_the_reference_rule(setting, foreach):
    betas, lr, eps = (0.98, 0.92, 0.99), 0.01, 1e-8
    params = make_params()
    expected = adan_reference(params, [_grads(t) for t in STEPS], lr, betas, eps, **setting)
    opt = geoptim.Adan(
        params,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=setting["wd"],
        no_prox=setting["no_prox"],
        max_grad_norm=setting["max_grad_norm"],
        foreach=foreach,
    )
    _drive(opt, params, _grads)
    for a, b in zip(params, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("setting", ADAN_SETTINGS)
def test_adan_matches_pytorch_optimizer(setting):
    """pytorch-optimizer's Adan follows the same rule (checked above against ours); it
    overwrites p.grad in place, which _drive's fresh clones make harmless, and computes the
    global gradient norm for clipping in float32 (hence the looser tolerance there)."""
    from pytorch_optimizer import Adan as Oracle

    ours, theirs = make_params(), make_params()
    _drive(
        geoptim.Adan(
            ours,
            lr=0.01,
            weight_decay=setting["wd"],
            no_prox=setting["no_prox"],
            max_grad_norm=setting["max_grad_norm"],
        ),
        ours,
        _grads,
    )
    _drive(
        Oracle(
            theirs,
            lr=0.01,
            weight_decay=setting["wd"],
            weight_decouple=setting["no_prox"],
            max_grad_norm=setting["max_grad_norm"],
        ),
        theirs,
        _grads,
    )
    tol = 1e-6 if setting["max_grad_norm"] else 1e-10
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-2)


def psi(g):
    """AGR's transform, from its definition: g - |g| / sum|g| * g (0-sum guarded)."""
    total = g.abs().sum()
    return g if total == 0 else g - g.abs() / total * g


@pytest.mark.parametrize("agr_until", [None, 4])
def test_adamw_agr_equals_adamw_fed_psi(agr_until):
    ours, theirs = make_params(), make_params()
    opt = geoptim.AdamWAGR(ours, lr=0.01, weight_decay=0.05, agr_until=agr_until)
    oracle = torch.optim.AdamW(theirs, lr=0.01, weight_decay=0.05)
    for step in STEPS:
        grads = _grads(step)
        for p, g in zip(ours, grads):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(ours, grads):
            assert torch.equal(p.grad, g)  # the user's gradient is restored
        use_agr = agr_until is None or step <= agr_until
        for p, g in zip(theirs, grads):
            p.grad = psi(g) if use_agr else g.clone()
        oracle.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_adan_agr_clips_with_raw_norm_then_applies_psi():
    params = make_params()
    grads_per_step = [_grads(t) for t in STEPS]
    # Reference: the clip factor from raw gradients, applied to Psi(g): feed the reference
    # Adan pre-clipped Psi(g) * clip with clipping off.
    fed = []
    for raw in grads_per_step:
        total = math.sqrt(sum(float((g**2).sum()) for g in raw))
        clip = min(1.0, 0.5 / (total + 1e-8))
        fed.append([psi(g) * clip for g in raw])
    expected = adan_reference(params, fed, 0.01, (0.98, 0.92, 0.99), 1e-8, 0.02, False, 0.0)
    opt = geoptim.AdanAGR(params, lr=0.01, weight_decay=0.02, max_grad_norm=0.5)
    _drive(opt, params, _grads)
    for a, b in zip(params, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_agr_function_matches_definition_and_edge_cases():
    g = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(geoptim.agr(g), psi(g), rtol=1e-14, atol=0)
    assert torch.equal(geoptim.agr(torch.zeros(3)), torch.zeros(3))  # no NaN on zero grads
    assert torch.equal(geoptim.agr(torch.tensor([2.5])), torch.zeros(1))  # one element: Psi = 0
    half = torch.randn(4, 4, dtype=torch.bfloat16)
    assert geoptim.agr(half).dtype == torch.bfloat16
