"""Monitors against hand-built cases and direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from geoptim import create_optimizer
from geoptim.analysis.monitors import (
    MomentumTracing,
    UpdateCosine,
    UpdateRMS,
    WeightNorms,
    WeightQuantile,
    fixed_point_norm,
    quantile,
)


def bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def set_state(
    optimizer: torch.optim.Optimizer,
    key: str,
    momenta: dict[nn.Parameter, list[float]],
    grads: dict[nn.Parameter, list[float]],
) -> None:
    for p, values in momenta.items():
        optimizer.state[p][key] = torch.tensor(values).view(p.shape)
    for p, values in grads.items():
        p.grad = torch.tensor(values).view(p.shape)


@pytest.mark.parametrize(
    ("optimizer_name", "key"), [("sgdm", "momentum_buffer"), ("adamw", "exp_avg")]
)
@pytest.mark.parametrize("after_zero_gradient", [True, False])
def test_momentum_tracing_counts_constructed_case(
    optimizer_name: str, key: str, after_zero_gradient: bool
) -> None:
    model = bn_net()
    lin, bn = model[0], model[1]
    optimizer = create_optimizer(model, optimizer_name, lr=0.1)
    monitor = MomentumTracing(threshold=1e-3, after_zero_gradient=after_zero_gradient)
    zero = [0.0] * 4
    # step 1: BN-bias momentum tiny in entries 0, 1; linear-bias momentum tiny in entry 3;
    # BN-bias gradient zero except entry 1, linear-bias gradient zero
    set_state(
        optimizer,
        key,
        {bn.bias: [0.0, 1e-4, 0.5, -0.5], lin.bias: [1, 1, 1, 1e-5]},
        {bn.bias: [0.0, 0.1, 0.0, 0.0], lin.bias: zero},
    )
    monitor.on_step(1, model, optimizer, 0.0)
    assert monitor.history == {}  # nothing to compare with yet
    # step 2: gradients arrive in BN-bias entries 1, 2 and linear-bias entries 0, 3
    set_state(
        optimizer,
        key,
        {bn.bias: [0.0, 0.0, 0.0, 0.0], lin.bias: [1, 1, 1, 1]},
        {bn.bias: [0.0, 2.0, 3.0, 0.0], lin.bias: [1.0, 0.0, 0.0, -1.0]},
    )
    monitor.on_step(2, model, optimizer, 0.0)
    # BN bias: tiny before {0, 1} (after a zero gradient: {0}), gradient now {1, 2};
    # linear bias: tiny before {3} (gradient was zero), gradient now {0, 3}
    assert monitor.history["step"] == [2]
    assert monitor.history["bn_bias"] == [0 if after_zero_gradient else 1]
    assert monitor.history["other"] == [1]
    # after step 2: BN momenta all 0, gradients zero in entries 0, 3; linear momenta 1
    assert monitor.history["bn_bias_dormant"] == [2 if after_zero_gradient else 4]
    assert monitor.history["other_dormant"] == [0]
    # step 3: every BN bias gets a gradient
    set_state(optimizer, key, {bn.bias: [1.0] * 4}, {bn.bias: [1.0] * 4, lin.bias: zero})
    monitor.on_step(3, model, optimizer, 0.0)
    assert monitor.history["bn_bias"][1] == (2 if after_zero_gradient else 4)
    assert monitor.history["other"] == [1, 0]


def test_momentum_tracing_explicit_state_key() -> None:
    model = bn_net()
    optimizer = create_optimizer(model, "sgdm", lr=0.1)
    bias = model[1].bias
    optimizer.state[bias]["momentum_buffer"] = torch.ones(4)  # never near zero
    optimizer.state[bias]["other"] = torch.zeros(4)
    bias.grad = torch.ones(4)
    monitor = MomentumTracing(state_key="other", after_zero_gradient=False)
    for step in (1, 2):
        monitor.on_step(step, model, optimizer, 0.0)
    assert monitor.history["bn_bias"] == [4]


def test_weight_quantile_matches_numpy() -> None:
    model = bn_net()
    monitor = WeightQuantile(q=0.95)
    monitor.on_step(1, model, None, 0.0)  # type: ignore[arg-type]
    flat = np.concatenate([p.detach().abs().numpy().ravel() for p in model.parameters()])
    assert monitor.history["quantile"][0] == pytest.approx(float(np.quantile(flat, 0.95)), rel=1e-6)
    values = torch.rand(1001)
    for q in (0.0, 0.5, 0.95, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values.numpy(), q)), rel=1e-6)


def test_update_cosine_and_rms_match_direct_computation() -> None:
    model = bn_net()
    cosine, rms = UpdateCosine(fraction=0.25), UpdateRMS()
    before = [p.detach().clone() for p in model.parameters()]
    for monitor in (cosine, rms):
        monitor.on_step(1, model, None, 0.0)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    for monitor in (cosine, rms):
        monitor.on_step(2, model, None, 0.0)  # type: ignore[arg-type]
    w = torch.cat([b.reshape(-1) for b in before])
    u = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - w
    idx = np.argsort(-w.abs().numpy())[: round(0.25 * w.numel())]
    wi, ui = w.numpy()[idx], u.numpy()[idx]
    expected = float(wi @ ui / np.linalg.norm(wi) / np.linalg.norm(ui))
    assert cosine.history["step"] == [2]
    assert cosine.history["cosine"][0] == pytest.approx(expected, rel=1e-5)
    for (name, p), b in zip(model.named_parameters(), before, strict=True):
        direct = float(np.sqrt(np.mean((p.detach().numpy() - b.numpy()) ** 2)))
        assert rms.history[name][0] == pytest.approx(direct, rel=1e-5)


def test_update_cosine_is_one_for_growth_along_weights() -> None:
    model = bn_net()
    monitor = UpdateCosine()
    monitor.on_step(1, model, None, 0.0)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    monitor.on_step(2, model, None, 0.0)  # type: ignore[arg-type]
    assert monitor.history["cosine"][0] == pytest.approx(1.0, abs=1e-6)


def test_fixed_point_formula() -> None:
    lr, wd, n = 0.01, 0.5, 100
    star = fixed_point_norm(lr, wd, n)
    assert star == pytest.approx(lr * math.sqrt(n) / math.sqrt(2 * lr * wd - (lr * wd) ** 2))
    # it is the fixed point of ||w'||^2 = (1 - lr wd)^2 ||w||^2 + lr^2 n
    assert (1 - lr * wd) ** 2 * star**2 + lr**2 * n == pytest.approx(star**2)
    # and the recursion of an orthogonal, unit-RMS update converges to it
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    for _ in range(3000):
        u = torch.randn(n, generator=gen, dtype=torch.float64)
        u = u - (u @ w) / (w @ w) * w
        w = w * (1 - lr * wd) - lr * u * math.sqrt(n) / u.norm()
    assert float(w.norm()) == pytest.approx(star, rel=1e-6)
    assert math.isinf(fixed_point_norm(lr, 0.0, n))


def test_weight_norms_report_group_fixed_points() -> None:
    model = bn_net()
    optimizer = create_optimizer(model, "sgdm", lr=0.1, weight_decay=0.2)
    monitor = WeightNorms(every_steps=2)
    monitor.on_step(1, model, optimizer, 0.0)
    monitor.on_step(2, model, optimizer, 0.0)
    monitor.on_epoch_end(1, model, optimizer)
    assert monitor.history["step"] == [2, None]
    assert monitor.history["epoch"] == [None, 1]
    weight = model[0].weight
    assert monitor.history["0.weight"][0] == pytest.approx(float(weight.detach().norm()))
    assert monitor.history["0.weight:fixed_point"][0] == pytest.approx(
        fixed_point_norm(0.1, 0.2, weight.numel())
    )
    assert monitor.history["1.bias:fixed_point"] == [None, None]  # biases: no weight decay
