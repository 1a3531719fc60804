"""Hessian spectra: top eigenvalues (Lanczos), trace (Hutchinson), density (SLQ).

All three act on a symmetric ``n x n`` matrix ``H`` known only through products ``v -> H v``
(a :class:`~geoptim.analysis.hvp.HessianOperator`, or anything with ``matvec``, ``size``,
``dtype`` and ``device``). The model-level functions build the operator from
``(model, loss_fn, data)``; see :mod:`geoptim.analysis.hvp` for the loss that is differentiated
and for how train/eval mode is treated (the caller's choice, left unchanged).

Lanczos with full reorthogonalisation: from a unit vector ``q_1``, ``m`` steps build an orthonormal
basis ``Q = [q_1..q_m]`` of the Krylov space ``span{q_1, H q_1, ..., H^(m-1) q_1}`` and the
tridiagonal ``T = Q^T H Q`` (diagonal ``alpha``, off-diagonal ``beta``). Every new vector is
orthogonalised against all of ``Q`` (classical Gram-Schmidt, a second pass when the first
cancels more than 30% of the norm), so no ghost copies of converged eigenvalues appear. With
``T = S diag(theta) S^T``, the Ritz value ``theta_i`` has the residual
``||H Q s_i - theta_i Q s_i|| = beta_m |S[m, i]|``, which bounds its distance to an
eigenvalue of ``H``. A single start vector finds one copy of a repeated eigenvalue.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from geoptim.analysis.hvp import Data, HessianOperator, LossFn


class LinearOperator(Protocol):
    size: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, vector: Tensor) -> Tensor: ...


@dataclass
class Tridiagonal:
    """Lanczos output: ``T``'s diagonal ``alpha`` (m,), off-diagonal ``beta`` (m-1,), the basis
    ``basis`` (m, n), and ``last_beta`` (the norm of the residual after the last step)."""

    alpha: Tensor
    beta: Tensor
    basis: Tensor
    last_beta: float

    def eigh(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and the eigenvectors ``S`` of ``T`` (columns), float64."""
        alpha, beta = self.alpha.double(), self.beta.double()
        matrix = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
        return torch.linalg.eigh(matrix)


def _rademacher(
    size: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    bits = torch.randint(0, 2, (size,), generator=generator, device=device)
    return (2 * bits - 1).to(dtype)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def lanczos(
    operator: LinearOperator,
    start: Tensor,
    steps: int,
    *,
    breakdown: float = 1e-10,
    stop: Callable[[Tridiagonal], bool] | None = None,
) -> Tridiagonal:
    """``steps`` Lanczos steps from ``start`` with full reorthogonalisation.

    Stops early when the Krylov space is exhausted (``beta < breakdown * ||T||``, e.g. ``steps``
    larger than ``n``) or when ``stop(partial_tridiagonal)`` returns true after a step.
    """
    n = operator.size
    steps = min(steps, n)
    basis = torch.empty(steps, n, dtype=operator.dtype, device=operator.device)
    alpha = torch.zeros(steps, dtype=torch.float64)
    beta = torch.zeros(steps, dtype=torch.float64)
    q = start.to(operator.dtype) / start.norm()
    scale = 0.0
    m = 0
    for j in range(steps):
        basis[j] = q
        m = j + 1
        w = operator.matvec(q)
        alpha[j] = torch.dot(q, w).item()
        w = w - alpha[j].item() * q
        if j > 0:
            w = w - beta[j - 1].item() * basis[j - 1]
        norm = w.norm()
        w = w - basis[:m].T @ (basis[:m] @ w)
        if w.norm() < 0.7 * norm:  # cancellation: one more pass (Kahan's "twice is enough")
            w = w - basis[:m].T @ (basis[:m] @ w)
        beta[j] = w.norm().item()
        scale = max(scale, abs(alpha[j].item()) + beta[j].item())
        if beta[j] <= breakdown * scale:
            break
        partial = Tridiagonal(alpha[:m], beta[: m - 1], basis[:m], beta[j].item())
        if stop is not None and stop(partial):
            break
        q = w / beta[j]
    return Tridiagonal(alpha[:m], beta[: m - 1], basis[:m], beta[m - 1].item())


# ---------------------------------------------------------------------------- top eigenvalues


WHICH = ("LA", "SA", "LM")


@dataclass
class Eigenpairs:
    """``values`` (k,) in the order asked for (``LA``: descending, ``SA``: ascending, ``LM``:
    descending magnitude), unit ``vectors`` (k, n) in the operator's layout, each value's
    residual bound ``||H x - theta x||``, Hessian-vector products used, and convergence."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    n_products: int
    converged: bool


def _select(values: Tensor, k: int, which: str) -> Tensor:
    key = {"LA": -values, "SA": values, "LM": -values.abs()}[which]
    return torch.argsort(key)[:k]


def top_eigenpairs(
    operator: LinearOperator,
    k: int = 1,
    *,
    which: str = "LA",
    max_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
) -> Eigenpairs:
    """The ``k`` extreme eigenpairs of ``operator`` by Lanczos (see the module docstring).

    ``which``: ``"LA"`` largest algebraic (default), ``"SA"`` smallest algebraic, ``"LM"``
    largest magnitude. Converged when each of the ``k`` Ritz values has the error estimate
    ``min(r, r^2 / gap) <= tol * |theta|``, with ``r`` its residual bound and ``gap`` its
    distance to the nearest other Ritz value less that value's residual bound (``r`` alone when
    there is no positive gap). The residual bound is rigorous; ``r^2 / gap`` is the gap
    theorem's bound with Ritz values standing in for the unknown eigenvalues, so an eigenvalue
    the Krylov space has not yet seen can make it optimistic. The start vector is Rademacher,
    drawn from ``seed``.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not 1 <= k <= operator.size:
        raise ValueError(f"k must be in [1, {operator.size}], got {k}")

    def residuals(t: Tridiagonal) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        theta, s = t.eigh()
        res_all = t.last_beta * s[-1].abs()
        index = _select(theta, k, which)
        res = res_all[index]
        gaps = (theta[index, None] - theta[None, :]).abs() - res_all[None, :]
        gaps[torch.arange(len(index)), index] = math.inf
        gap = gaps.min(dim=1).values
        usable = (gap > 0) & torch.isfinite(gap)
        error = torch.where(usable, torch.minimum(res, res**2 / gap.clamp_min(1e-300)), res)
        return theta[index], s[:, index], res, error

    def done(t: Tridiagonal) -> bool:
        if t.alpha.numel() < k:
            return False
        theta, _, _, error = residuals(t)
        return bool((error <= tol * theta.abs().clamp_min(1e-30)).all())

    start = _rademacher(
        operator.size, _generator(seed, operator.device), operator.dtype, operator.device
    )
    t = lanczos(operator, start, max(max_iter, k), stop=done)
    theta, s, res, _ = residuals(t)
    vectors = s.T.to(t.basis.dtype) @ t.basis
    return Eigenpairs(
        values=theta,
        vectors=vectors / vectors.norm(dim=1, keepdim=True),
        residuals=res,
        n_products=t.alpha.numel(),
        converged=t.alpha.numel() == operator.size or done(t),
    )


def hessian_top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    k: int = 1,
    *,
    which: str = "LA",
    max_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    method: str = "reverse",
) -> Eigenpairs:
    """The ``k`` largest (``which``) Hessian eigenvalues of ``loss_fn`` on ``data`` at the
    model's parameters; see :func:`top_eigenpairs` and :class:`HessianOperator`."""
    operator = HessianOperator(model, loss_fn, data, dtype=dtype, method=method)
    return top_eigenpairs(operator, k, which=which, max_iter=max_iter, tol=tol, seed=seed)


# ---------------------------------------------------------------------------- trace


@dataclass
class TraceEstimate:
    """Hutchinson's estimate ``value`` of ``tr(H)``, its standard error, and the samples."""

    value: float
    std_error: float
    samples: list[float] = field(repr=False)


def trace_estimate(
    operator: LinearOperator,
    *,
    rtol: float = 1e-2,
    min_samples: int = 10,
    max_samples: int = 200,
    seed: int = 0,
) -> TraceEstimate:
    """Hutchinson's estimator ``tr(H) ~ mean_i z_i^T H z_i`` with Rademacher probes ``z_i``.

    Each sample is unbiased (``E[z z^T] = I``) with variance ``2 * sum_{i != j} H_ij^2``. After
    ``min_samples`` probes, sampling stops as soon as the standard error of the mean
    ``s / sqrt(m)`` is at most ``rtol * |mean|``, or at ``max_samples``.
    """
    if min_samples < 2 or max_samples < min_samples:
        raise ValueError("need 2 <= min_samples <= max_samples")
    generator = _generator(seed, operator.device)
    samples: list[float] = []
    std_error = math.inf
    while len(samples) < max_samples:
        z = _rademacher(operator.size, generator, operator.dtype, operator.device)
        samples.append(torch.dot(z, operator.matvec(z)).item())
        m = len(samples)
        if m >= 2:
            mean = sum(samples) / m
            var = sum((x - mean) ** 2 for x in samples) / (m - 1)
            std_error = math.sqrt(var / m)
            if m >= min_samples and std_error <= rtol * abs(mean):
                break
    return TraceEstimate(sum(samples) / len(samples), std_error, samples)


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    rtol: float = 1e-2,
    min_samples: int = 10,
    max_samples: int = 200,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    method: str = "reverse",
) -> TraceEstimate:
    """Hutchinson's estimate of the Hessian trace; see :func:`trace_estimate`."""
    operator = HessianOperator(model, loss_fn, data, dtype=dtype, method=method)
    return trace_estimate(
        operator, rtol=rtol, min_samples=min_samples, max_samples=max_samples, seed=seed
    )


# ---------------------------------------------------------------------------- density


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature of the eigenvalue density ``phi(t) = (1/n) sum_i
    delta(t - lambda_i)``: quadrature ``nodes`` and ``weights`` (all probes together, weights
    summing to 1), and the density smoothed by a Gaussian of width ``sigma`` on ``grid``."""

    nodes: Tensor
    weights: Tensor
    grid: Tensor
    density: Tensor
    sigma: float

    def moment(self, power: int) -> float:
        """``sum_j w_j theta_j^power``, the estimate of ``tr(H^power) / n``."""
        return float((self.weights * self.nodes**power).sum())

    def to_dict(self) -> dict[str, object]:
        return {
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "sigma": self.sigma,
        }


def gaussian_smoothing(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """``sum_j w_j N(x; theta_j, sigma^2)`` at each grid point ``x``."""
    z = (grid[:, None] - nodes[None, :]) / sigma
    kernel = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    return kernel @ weights


def spectral_density(
    operator: LinearOperator,
    *,
    n_probes: int = 4,
    steps: int = 64,
    seed: int = 0,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    grid_size: int = 1000,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature (Ghorbani et al., 2019; Lin et al., 2016).

    For a unit probe ``v`` and ``m`` Lanczos steps from it, ``T = S diag(theta) S^T`` gives the
    Gauss quadrature ``v^T f(H) v ~ sum_j S[0, j]^2 f(theta_j)``, exact for polynomials ``f`` of
    degree ``< 2m``. With ``v = z / sqrt(n)`` for Rademacher ``z``, ``E[v^T f(H) v] =
    tr f(H) / n``, so averaging the quadratures of ``n_probes`` probes estimates the
    eigenvalue density. ``sigma`` (absolute) defaults to ``sigma_rel`` times the span of the
    nodes; the grid spans the nodes plus ``5 sigma`` on each side.
    """
    generator = _generator(seed, operator.device)
    nodes, weights = [], []
    for _ in range(n_probes):
        z = _rademacher(operator.size, generator, operator.dtype, operator.device)
        theta, s = lanczos(operator, z, steps).eigh()
        nodes.append(theta)
        weights.append(s[0] ** 2 / n_probes)
    all_nodes, all_weights = torch.cat(nodes), torch.cat(weights)
    span = float(all_nodes.max() - all_nodes.min())
    if sigma is None:
        sigma = sigma_rel * (span if span > 0 else max(float(all_nodes.abs().max()), 1.0))
    grid = torch.linspace(
        float(all_nodes.min()) - 5 * sigma,
        float(all_nodes.max()) + 5 * sigma,
        grid_size,
        dtype=torch.float64,
    )
    return SpectralDensity(
        all_nodes,
        all_weights,
        grid,
        gaussian_smoothing(all_nodes, all_weights, grid, sigma),
        sigma,
    )


def hessian_density(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    n_probes: int = 4,
    steps: int = 64,
    seed: int = 0,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    grid_size: int = 1000,
    dtype: torch.dtype | None = None,
    method: str = "reverse",
) -> SpectralDensity:
    """The Hessian's eigenvalue density by SLQ; see :func:`spectral_density`."""
    operator = HessianOperator(model, loss_fn, data, dtype=dtype, method=method)
    return spectral_density(
        operator,
        n_probes=n_probes,
        steps=steps,
        seed=seed,
        sigma=sigma,
        sigma_rel=sigma_rel,
        grid_size=grid_size,
    )
