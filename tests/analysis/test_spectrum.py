"""Hessian-vector products, top eigenvalues, trace and SLQ density against exact Hessians."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
from torch.nn import functional as F

from geoptim.analysis import (
    HessianOperator,
    hessian_density,
    hessian_top_eigenvalues,
    hessian_trace,
    spectral_density,
    top_eigenpairs,
    trace_estimate,
)

F64 = torch.float64


def small_mlp(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(5, 12)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(12))
    layers += [nn.Tanh(), nn.Linear(12, 3)]
    return nn.Sequential(*layers).double()


def batch(n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen)


def exact_hessian(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``torch.func.hessian`` of the loss as a function of the flat parameter vector."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    if model.training:
        buffers = {name: None for name in buffers}

    def loss(w: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(w, numels)
        params = {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, (params, buffers), (data[0],)), data[1])

    return hessian(loss)(flat)


def double_backward_hessian(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """The Hessian column by column by plain autograd double backward (no ``vmap``).

    Used for training-mode BatchNorm, where ``torch.func.hessian`` (torch 2.13, vmap over the
    batch-norm backward) disagrees with autograd and with finite differences.
    """
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(data[0]), data[1]), params, create_graph=True)
    flat_grad = torch.cat([g.reshape(-1) for g in grads])
    rows = [
        torch.cat([r.reshape(-1) for r in torch.autograd.grad(gi, params, retain_graph=True)])
        for gi in flat_grad
    ]
    return torch.stack(rows)


class Quadratic(nn.Module):
    """``f(w) = 0.5 w^T A w`` with ``A = Q diag(eigenvalues) Q^T`` for a random rotation ``Q``."""

    def __init__(self, eigenvalues: torch.Tensor) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        n = eigenvalues.numel()
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
        self.register_buffer("a", q @ torch.diag(eigenvalues.to(F64)) @ q.T)
        self.w = nn.Parameter(torch.randn(n, generator=gen, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w + 0.0 * x.sum()


def quadratic_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs


QUAD_EIGS = torch.cat([torch.tensor([9.0, 6.5, 4.0]), torch.linspace(-3.0, 2.0, 37)])
QUAD_DATA = (torch.zeros(1, dtype=F64), torch.zeros(1))


def hutchinson_se(matrix: torch.Tensor, probes: int) -> float:
    """Exact standard error of the mean of ``probes`` Rademacher samples ``z^T M z``."""
    off = matrix - torch.diag(torch.diag(matrix))
    return math.sqrt(2 * float((off**2).sum()) / probes)


# ---------------------------------------------------------------------------- products


@pytest.mark.parametrize("method", ["forward", "reverse"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_hvp_equals_hessian_times_vector(method: str, mode: str) -> None:
    model = small_mlp(batchnorm=True)
    data = batch()
    model.train()
    model(data[0])  # non-trivial running statistics for eval mode
    model.train(mode == "train")
    h = double_backward_hessian(model, data)  # in training mode, updates the running stats
    if mode == "eval":
        torch.testing.assert_close(h, exact_hessian(model, data), atol=1e-12, rtol=0)
    before = {name: b.clone() for name, b in model.named_buffers()}
    op = HessianOperator(model, F.cross_entropy, data, method=method)
    for seed in range(3):
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(seed), dtype=F64)
        torch.testing.assert_close(op.matvec(v), h @ v, atol=1e-10, rtol=0)
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), f"buffer {name} was modified"
    assert model.training == (mode == "train")


def test_hvp_through_attention_is_symmetric() -> None:
    """A transformer's products run (CPU's fused attention kernel has no double backward) and
    give a symmetric operator: u^T H v = v^T H u."""
    from geoptim.bench.tasks.vit import TinyViT

    torch.manual_seed(0)
    model = TinyViT(d_model=8, n_heads=2, n_layers=1, d_mlp=8).eval()
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    op = HessianOperator(model, F.cross_entropy, (images, labels), method="reverse")
    u, v = torch.randn(op.size, dtype=op.dtype), torch.randn(op.size, dtype=op.dtype)
    hu, hv = op.matvec(u), op.matvec(v)
    assert float(hv.norm()) > 0
    assert float(u @ hv) == pytest.approx(float(v @ hu), rel=1e-4)


def test_float64_option_on_float32_model() -> None:
    model = small_mlp().float().eval()
    x, y = batch()
    x = x.float().double()  # exactly representable in float32
    op = HessianOperator(model, F.cross_entropy, (x.float(), y), dtype=F64)
    assert op.params.dtype == F64
    h = exact_hessian(model.double(), (x, y))
    v = torch.randn(op.size, dtype=F64)
    torch.testing.assert_close(op.matvec(v), h @ v, atol=1e-10, rtol=0)


def test_iterable_of_batches_equals_concatenated_batch() -> None:
    model = small_mlp().eval()
    x, y = batch(40)
    whole = HessianOperator(model, F.cross_entropy, (x, y))
    parts = HessianOperator(model, F.cross_entropy, [(x[:10], y[:10]), (x[10:], y[10:])])
    v = torch.randn(whole.size, dtype=F64)
    torch.testing.assert_close(parts.matvec(v), whole.matvec(v), atol=1e-12, rtol=0)
    top_whole = hessian_top_eigenvalues(model, F.cross_entropy, (x, y), k=2)
    top_parts = hessian_top_eigenvalues(
        model, F.cross_entropy, iter([(x[:25], y[:25]), (x[25:], y[25:])]), k=2
    )
    torch.testing.assert_close(top_parts.values, top_whole.values, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------- eigenvalues


@pytest.mark.parametrize("method", ["forward", "reverse"])
def test_top3_eigenvalues_of_mlp(method: str) -> None:
    model = small_mlp().eval()
    data = batch()
    exact = torch.linalg.eigvalsh(exact_hessian(model, data)).flip(0)[:3]
    result = hessian_top_eigenvalues(model, F.cross_entropy, data, k=3, method=method)
    assert result.converged
    assert ((result.values - exact).abs() / exact.abs()).max() < 1e-4
    h = exact_hessian(model, data)
    for value, vector in zip(result.values, result.vectors, strict=True):
        assert torch.linalg.vector_norm(h @ vector - value * vector) < 1e-3 * abs(value)


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("LA", [9.0, 6.5, 4.0]),
        ("SA", [-3.0, -3.0 + 5 / 36, -3.0 + 10 / 36]),
        ("LM", [9.0, 6.5, 4.0]),
    ],
)
def test_eigenvalues_of_quadratic(which: str, expected: list[float]) -> None:
    result = hessian_top_eigenvalues(
        Quadratic(QUAD_EIGS), quadratic_loss, QUAD_DATA, k=3, which=which
    )
    torch.testing.assert_close(result.values, torch.tensor(expected, dtype=F64), rtol=1e-4, atol=0)


def test_largest_magnitude_can_be_negative() -> None:
    eigs = torch.tensor([-8.0, 5.0, 1.0, 0.5, -0.25])
    result = hessian_top_eigenvalues(Quadratic(eigs), quadratic_loss, QUAD_DATA, k=2, which="LM")
    torch.testing.assert_close(
        result.values, torch.tensor([-8.0, 5.0], dtype=F64), rtol=1e-6, atol=0
    )


# ---------------------------------------------------------------------------- trace


def test_trace_of_mlp_within_three_standard_errors() -> None:
    model = small_mlp().eval()
    data = batch()
    h = exact_hessian(model, data)
    estimate = hessian_trace(model, F.cross_entropy, data, max_samples=100, seed=4)
    assert abs(estimate.value - float(torch.trace(h))) <= 3 * estimate.std_error
    exact_se = hutchinson_se(h, len(estimate.samples))
    assert 0.5 * exact_se < estimate.std_error < 2 * exact_se


def test_trace_of_quadratic_and_stopping_rule() -> None:
    eigs = QUAD_EIGS + 1.0
    op = HessianOperator(Quadratic(eigs), quadratic_loss, QUAD_DATA)
    estimate = trace_estimate(op, rtol=0.05, min_samples=10, max_samples=500, seed=0)
    assert abs(estimate.value - float(eigs.sum())) <= 3 * estimate.std_error
    assert estimate.std_error <= 0.05 * abs(estimate.value)
    assert 10 <= len(estimate.samples) < 500


# ---------------------------------------------------------------------------- density


def check_moments(op: HessianOperator, h: torch.Tensor, probes: int) -> None:
    density = spectral_density(op, n_probes=probes, steps=20, seed=0)
    eigs = torch.linalg.eigvalsh(h)
    n = h.shape[0]
    assert float(density.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    for power, matrix in ((1, h), (2, h @ h)):
        exact = float((eigs**power).mean())
        tolerance = 4 * hutchinson_se(matrix, probes) / n
        assert abs(density.moment(power) - exact) <= tolerance, power
    assert float(density.nodes.max()) == pytest.approx(float(eigs.max()), rel=1e-6)
    grid_step = float(density.grid[1] - density.grid[0])
    assert float(density.density.sum()) * grid_step == pytest.approx(1.0, abs=1e-3)


def test_slq_moments_of_mlp() -> None:
    model = small_mlp().eval()
    data = batch()
    check_moments(HessianOperator(model, F.cross_entropy, data), exact_hessian(model, data), 30)


def test_slq_moments_of_quadratic_with_negative_eigenvalues() -> None:
    quad = Quadratic(QUAD_EIGS)
    check_moments(HessianOperator(quad, quadratic_loss, QUAD_DATA), quad.a, 30)
    density = hessian_density(quad, quadratic_loss, QUAD_DATA, n_probes=2, steps=40)
    assert float(density.nodes.min()) == pytest.approx(-3.0, rel=1e-8)
    saved = json.loads(json.dumps(density.to_dict()))
    assert saved["nodes"] == density.nodes.tolist() and len(saved["grid"]) == 1000


def test_slq_quadrature_is_exact_for_low_degree_polynomials() -> None:
    """With one probe, ``sum_j w_j theta_j^k = z^T H^k z / n`` exactly for ``k < 2m``."""
    quad = Quadratic(QUAD_EIGS)
    op = HessianOperator(quad, quadratic_loss, QUAD_DATA)
    density = spectral_density(op, n_probes=1, steps=3, seed=7)
    gen = torch.Generator().manual_seed(7)
    z = (2 * torch.randint(0, 2, (op.size,), generator=gen) - 1).to(F64)
    for power in range(6):
        expected = float(z @ torch.linalg.matrix_power(quad.a, power) @ z) / op.size
        assert density.moment(power) == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------- seeds


def test_seeds_make_results_reproducible() -> None:
    model = small_mlp().eval()
    data = batch()
    op = HessianOperator(model, F.cross_entropy, data)
    a = trace_estimate(op, max_samples=20, seed=5)
    b = trace_estimate(op, max_samples=20, seed=5)
    c = trace_estimate(op, max_samples=20, seed=6)
    assert a.samples == b.samples and a.samples != c.samples
    d1 = spectral_density(op, n_probes=2, steps=8, seed=1)
    d2 = spectral_density(op, n_probes=2, steps=8, seed=1)
    assert torch.equal(d1.nodes, d2.nodes) and torch.equal(d1.weights, d2.weights)
    e1 = top_eigenpairs(op, 1, max_iter=5, seed=2)
    e2 = top_eigenpairs(op, 1, max_iter=5, seed=2)
    assert torch.equal(e1.values, e2.values)
