r"""A p schedule driven by measured curvature: :class:`CurvaturePScheduler`.

The LPSGD paper anneals p from :math:`p_{max}` to 2 along a fixed cosine because curvature is
meant to be strongly anisotropic early in training and nearly isotropic later. This scheduler
measures the anisotropy instead and sets every param group's ``p`` from it.

**Anisotropy.** Both estimators return a number :math:`a \in [1, n]` for ``n`` parameters: 1 when
all directions are alike, ``n`` when one direction carries everything.

* ``estimator="hessian"``: ``lanczos_steps`` Lanczos steps (Hessian-vector products by double
  backward) on the loss that the closure returns, started from a Rademacher vector :math:`z`
  (entries :math:`\pm 1`). The Ritz values :math:`\theta_1 \le \dots \le \theta_m` and the squared
  first components :math:`w_j` of the eigenvectors of the tridiagonal matrix (the weights of
  stochastic Lanczos quadrature, summing to 1) give

  .. math::

      \lambda_{max} \approx \theta_m, \qquad
      \bar\lambda = \frac{\operatorname{tr}|H|}{n} \approx \frac{|\theta_m|}{n}
      + \Bigl(1 - \frac1n\Bigr) \frac{\sum_{j<m} w_j |\theta_j|}{\sum_{j<m} w_j}, \qquad
      a = \frac{\lambda_{max}}{\bar\lambda},

  the largest eigenvalue over the mean absolute eigenvalue: the ``anisotropy`` that
  :mod:`geoptim.analysis.curvature` records offline, here from one probe. One-probe quadrature
  :math:`\sum_j w_j |\theta_j|` is unbiased, but when a sharp direction carries most of
  :math:`\operatorname{tr}|H|` its weight :math:`w_m` (about :math:`\chi^2_1 / n`) makes the
  estimate swing by a factor of two; replacing :math:`w_m` by its expectation :math:`1/n` leaves
  only the noise of the bulk's weighted mean. On a diagonal Hessian a Rademacher probe gives
  every eigenvector the weight :math:`1/n` exactly, and the estimate is exact once the steps cover
  the distinct eigenvalues. The bulk is the mean of :math:`|\lambda|`, not the Hutchinson mean
  :math:`\operatorname{tr} H/n`, so negative eigenvalues add to the bulk instead of cancelling
  positive ones; one Lanczos run yields both numbers, and at equal products Lanczos finds
  :math:`\lambda_{max}` faster than power iteration (hence no separate power estimator). Cost: one
  backward pass with its graph, ``lanczos_steps`` double-backward products and as many stored
  vectors, every ``interval`` steps.
* ``estimator="gradient"``: the spread across coordinates of the root mean square gradient. An
  EMA :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2` (Adam's second moment, kept here) is
  updated every step and, every ``interval`` steps, reduced to

  .. math:: a = \frac{n \sum_i v_i}{\left(\sum_i \sqrt{v_i}\right)^2}
               = \frac{\operatorname{mean}(s^2)}{\operatorname{mean}(s)^2}, \qquad s = \sqrt{v},

  :math:`1 + \mathrm{CV}(s)^2`, the inverse participation ratio of :math:`s` times ``n``. When
  the gradients are :math:`g = H(x - x^*)` with an isotropic spread of :math:`x - x^*` and a
  diagonal :math:`H`, :math:`s_i \propto |\lambda_i|` and
  :math:`a = n \sum \lambda_i^2 / (\sum |\lambda_i|)^2`: the same [1, n] scale as the Hessian
  estimate and close to it for a few sharp directions over a flat bulk (one eigenvalue 1000 over
  63 ones: 56.6 here, 60.2 for :math:`\lambda_{max}/\bar\lambda`).
  Unlike a maximum or a quantile it is made of two sums, so :func:`geoptim._stats.per_tensor_sums`
  reduces it exactly over FSDP2 shards, and it is scale-free (no bias correction needed). It
  measures the diagonal only, and is the gradient's spread, not the Hessian's: read it as a proxy.
  Cost: one pass over the gradients per step (two foreach ops) and one buffer per parameter.

The estimate is pooled over the parameters of all groups (one ``p`` for the optimizer, as
:class:`~geoptim.lp.CosinePScheduler`). Values below 1 (an indefinite Hessian whose top eigenvalue
is small against its negative ones) count as 1.

**Smoothing and the map.** With :math:`\ell_k` an EMA of :math:`\log a` (coefficient
``smoothing``, started at the first estimate),

.. math::

    t = \operatorname{clamp}\!\left(\frac{\ell_k - \log a_{lo}}{\log a_{hi} - \log a_{lo}}, 0, 1
    \right), \qquad p = p_{min} + (p_{max} - p_{min})\, t,

monotone in the anisotropy, on a log scale because anisotropy spans orders of magnitude. The
defaults ``a_lo = 1`` (isotropic) and ``a_hi = None`` (the first smoothed estimate) start training
at :math:`p_{max}`, like the cosine schedule, and lower p as the anisotropy falls towards isotropy;
a rising anisotropy keeps :math:`p_{max}`. (A calibration with :math:`a_{hi} \le a_{lo}` makes the
map a step at :math:`a_{lo}`.) With ``never_increase=True``, :math:`p_k = \min(p_{k-1}, p)`: a
monotone annealing, of which the cosine schedule is the case of an anisotropy falling along a
cosine. Before the first estimate, and whenever an estimate is undefined (zero gradients, a zero
Hessian) or not finite, p keeps its value (a non-finite gradient estimate also restarts the EMA).

**Cost**, measured once (the digits ResNet of :mod:`geoptim.bench.models`, 19.7k parameters, batch
64, float32, one thread of a CPU shared with other jobs: rough figures). A training step (forward,
backward, ``LPSGDM.step``) took 28 ms, ``optimizer.step`` 0.82 ms. The gradient estimator: 0.25 ms
per step and 0.67 ms per estimate, so 0.29 ms per step at ``interval=10``: 0.35 times
``optimizer.step``, 1% of a training step. The Hessian estimator, 10 Lanczos steps: 0.81 s per
estimate, 28 training steps, so 28% extra at ``interval=100``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from geoptim._stats import global_numels, layout_of, local, per_tensor_sums, sharded

__all__ = ["CurvaturePScheduler", "gradient_anisotropy", "hessian_anisotropy"]

ESTIMATORS = ("hessian", "gradient")
DEFAULT_INTERVAL = {"hessian": 100, "gradient": 10}
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_p(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 2:
        raise ValueError(f"{name} must be a finite number >= 2, got {value!r}")
    return float(value)


def _dot(xs: list[Tensor], ys: list[Tensor]) -> float:
    return float(per_tensor_sums("dot", xs, ys).double().sum())


def gradient_anisotropy(second_moments: list[Tensor]) -> float:
    r""":math:`n \sum v / (\sum \sqrt v)^2` over all elements of ``second_moments`` (whole
    tensors, or local shards declared with :func:`geoptim._stats.sharded`); NaN when every
    element is 0."""
    roots = torch._foreach_sqrt(second_moments)
    sum_v = float(per_tensor_sums("abs", second_moments).double().sum())
    sum_roots = float(per_tensor_sums("abs", roots).double().sum())
    if sum_roots == 0:
        return math.nan
    return sum(global_numels(second_moments)) * sum_v / sum_roots**2


def hessian_anisotropy(
    loss: Tensor, params: list[Tensor], steps: int, generator: torch.Generator
) -> dict[str, float]:
    r"""``lambda_max``, ``mean_abs_eigenvalue`` and their ratio ``anisotropy`` (NaN for a zero
    Hessian) of the Hessian of ``loss`` in ``params``, by ``steps`` Lanczos steps with full
    reorthogonalisation from a Rademacher vector drawn with ``generator`` (module docstring).

    ``loss`` must carry its graph; parameters it does not use are left out of the Hessian.
    """
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not used:
        return {"anisotropy": math.nan, "lambda_max": 0.0, "mean_abs_eigenvalue": 0.0}
    params = [p for p, _ in used]
    outputs = [g for _, g in used if g.requires_grad]  # the others have zero Hessian rows

    def hvp(vector: list[Tensor]) -> list[Tensor]:
        if not outputs:
            return [torch.zeros_like(v) for v in vector]
        out_vectors = [v for (_, g), v in zip(used, vector) if g.requires_grad]
        products = torch.autograd.grad(
            outputs, params, out_vectors, retain_graph=True, allow_unused=True
        )
        return [torch.zeros_like(v) if h is None else h.detach() for h, v in zip(products, vector)]

    n = sum(p.numel() for p in params)
    probe = [
        torch.randint(0, 2, p.shape, generator=generator).to(p.device, p.dtype).mul_(2).sub_(1)
        for p in params
    ]
    basis = [torch._foreach_div(probe, math.sqrt(n))]
    alphas: list[float] = []
    betas: list[float] = []
    breakdown = 100 * torch.finfo(params[0].dtype).eps
    for step in range(steps):
        w = hvp(basis[-1])
        alphas.append(_dot(w, basis[-1]))
        for _ in range(2):  # classical Gram-Schmidt against the whole basis, twice
            coefficients = torch.stack([per_tensor_sums("dot", w, q).double().sum() for q in basis])
            for q, coefficient in zip(basis, coefficients.tolist()):
                torch._foreach_add_(w, q, alpha=-coefficient)
        beta = math.sqrt(max(_dot(w, w), 0.0))
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0))
        if step == steps - 1 or beta <= breakdown * scale:
            break
        betas.append(beta)
        basis.append(torch._foreach_div(w, beta))
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    ritz, vectors = torch.linalg.eigh(tridiagonal)
    weights = vectors[0].square()
    lambda_max, top_weight = float(ritz[-1]), float(weights[-1])
    rest_weight = 1.0 - top_weight
    if rest_weight > breakdown:
        rest_mean = float((weights[:-1] * ritz[:-1].abs()).sum()) / rest_weight
    else:  # the probe is an eigenvector: treat the rest of the spectrum as alike
        rest_mean = abs(lambda_max)
    mean_abs = abs(lambda_max) / n + (1 - 1 / n) * rest_mean
    anisotropy = lambda_max / mean_abs if mean_abs > 0 else math.nan
    return {"anisotropy": anisotropy, "lambda_max": lambda_max, "mean_abs_eigenvalue": mean_abs}


class CurvaturePScheduler:
    r"""Sets every param group's ``p`` from an online anisotropy estimate (module docstring).

    Call :meth:`step` once per optimizer step, after ``optimizer.step()`` and before
    ``zero_grad()``; the new ``p`` applies from the next optimizer step. Construction sets
    ``p = p_max``. Nothing but ``group["p"]`` of the optimizer is changed.

    Args:
        optimizer: an optimizer with ``p`` in its param groups (LPSGD, LPSGDM).
        p_max, p_min: the range of ``p`` (finite, ``2 <= p_min <= p_max``).
        estimator: ``"gradient"`` (default; :meth:`step` takes no argument and reads
            ``param.grad``) or ``"hessian"`` (:meth:`step` takes a closure, called only on
            estimation steps, that returns a mini-batch loss with its graph and does not call
            ``backward``; its side effects, such as BatchNorm statistics in training mode, are
            the caller's; single process only, as each rank would measure its own batch).
        interval: estimate every ``interval`` steps (default 10 for ``"gradient"``, 100 for
            ``"hessian"``, whose estimate costs about 1.5 to 3 times ``lanczos_steps`` training
            steps).
        smoothing: EMA coefficient in [0, 1) of the log anisotropy (0: the latest estimate).
        a_lo, a_hi: the anisotropies mapped to ``p_min`` and ``p_max``; ``a_hi=None``: the
            first smoothed estimate.
        never_increase: never raise ``p``.
        beta2: EMA coefficient in [0, 1) of ``g**2`` (``"gradient"``).
        lanczos_steps: Lanczos steps per estimate (``"hessian"``).
        seed: seeds the Rademacher probe of the estimate at step ``k`` with ``seed + k``.

    Mirrors ``torch.optim.lr_scheduler``: ``last_epoch`` (the number of :meth:`step` calls),
    :meth:`get_last_p`, :meth:`state_dict` and :meth:`load_state_dict` (an exact resume: the
    EMA buffers are part of the state). ``last_measurement`` holds the latest estimate
    (``anisotropy``, and for ``"hessian"`` also ``lambda_max`` and ``mean_abs_eigenvalue``).
    Sharded FSDP2 parameters are supported by ``"gradient"``; its buffers are local shards.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        p_max: float,
        p_min: float = 2.0,
        *,
        estimator: str = "gradient",
        interval: int | None = None,
        smoothing: float = 0.0,
        a_lo: float = 1.0,
        a_hi: float | None = None,
        never_increase: bool = False,
        beta2: float = 0.99,
        lanczos_steps: int = 10,
        seed: int = 0,
    ) -> None:
        p_min, p_max = _check_p("p_min", p_min), _check_p("p_max", p_max)
        if p_max < p_min:
            raise ValueError(f"p_max must be >= p_min={p_min}, got {p_max!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        interval = DEFAULT_INTERVAL[estimator] if interval is None else interval
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval!r}")
        for name, value in (("smoothing", smoothing), ("beta2", beta2)):
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(a_lo, (int, float)) or not 1 <= a_lo < math.inf:
            raise ValueError(f"a_lo must be a finite number >= 1, got {a_lo!r}")
        if a_hi is not None and not (isinstance(a_hi, (int, float)) and a_lo < a_hi < math.inf):
            raise ValueError(f"a_hi must be None or a finite number > a_lo={a_lo}, got {a_hi!r}")
        if not isinstance(lanczos_steps, int) or lanczos_steps < 1:
            raise ValueError(f"lanczos_steps must be an integer >= 1, got {lanczos_steps!r}")
        for group in optimizer.param_groups:
            if "p" not in group:
                raise ValueError(
                    f"{type(optimizer).__name__} has no 'p' in its param groups; "
                    "CurvaturePScheduler drives LPSGD/LPSGDM"
                )
        self.optimizer = optimizer
        self._params = [param for group in optimizer.param_groups for param in group["params"]]
        self.p_max, self.p_min = p_max, p_min
        self.estimator = estimator
        self.interval = interval
        self.smoothing = float(smoothing)
        self.a_lo = float(a_lo)
        self.a_hi = None if a_hi is None else float(a_hi)
        self.never_increase = never_increase
        self.beta2 = float(beta2)
        self.lanczos_steps = lanczos_steps
        self.seed = seed
        self.last_epoch = 0
        self.p = p_max
        self.log_anisotropy: float | None = None
        self.last_measurement: dict[str, float] = {}
        self.second_moments: dict[int, Tensor] = {}
        self._apply()

    def get_p(self, anisotropy: float) -> float:
        """The map from a (smoothed) anisotropy to ``p``, with the current ``a_hi``
        (``p_max`` while ``a_hi`` is not yet calibrated)."""
        if self.a_hi is None:
            return self.p_max
        log_lo = math.log(self.a_lo)
        span = math.log(self.a_hi) - log_lo
        excess = math.log(max(anisotropy, self.a_lo)) - log_lo
        t = min(excess / span, 1.0) if span > 0 else float(excess > 0)
        return self.p_min + (self.p_max - self.p_min) * t

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["p"] = self.p

    @torch.no_grad()
    def _accumulate(self) -> None:
        """``v <- beta2 v + (1 - beta2) g**2`` for every parameter with a gradient."""
        buffers, grads = [], []
        for index, param in enumerate(self._params):
            if param.grad is None:
                continue
            grad = local(param.grad)
            if index not in self.second_moments:
                dtype = torch.float32 if grad.dtype in LOW_PRECISION else grad.dtype
                self.second_moments[index] = torch.zeros_like(grad, dtype=dtype)
            buffer = self.second_moments[index]
            buffers.append(buffer)
            grads.append(grad.to(buffer.dtype))
        if buffers:
            torch._foreach_mul_(buffers, self.beta2)
            torch._foreach_addcmul_(buffers, grads, grads, value=1 - self.beta2)

    @torch.no_grad()
    def _measure_gradient(self) -> dict[str, float]:
        indices = sorted(self.second_moments)
        if not indices:
            return {"anisotropy": math.nan}
        buffers = [self.second_moments[i] for i in indices]
        with sharded([layout_of(self._params[i]) for i in indices]):
            anisotropy = gradient_anisotropy(buffers)
        if not math.isfinite(anisotropy):
            # All zero (restarting changes nothing) or non-finite gradients got into the EMA.
            self.second_moments.clear()
        return {"anisotropy": anisotropy}

    def _measure_hessian(self, closure: Callable[[], Tensor]) -> dict[str, float]:
        params = [p for p in self._params if p.requires_grad]
        generator = torch.Generator().manual_seed(self.seed + self.last_epoch)
        with torch.enable_grad():
            return hessian_anisotropy(closure(), params, self.lanczos_steps, generator)

    def step(self, closure: Callable[[], Tensor] | None = None) -> None:
        """Advance one optimizer step; on every ``interval``-th call, estimate and set ``p``."""
        if self.estimator == "gradient":
            if closure is not None:
                raise ValueError(
                    "the 'gradient' estimator reads param.grad; step() takes no closure"
                )
            self._accumulate()
        self.last_epoch += 1
        if self.last_epoch % self.interval != 0:
            return
        if self.estimator == "hessian":
            if closure is None:
                raise ValueError("the 'hessian' estimator needs step(closure) returning the loss")
            measurement = self._measure_hessian(closure)
        else:
            measurement = self._measure_gradient()
        self.last_measurement = measurement
        anisotropy = measurement["anisotropy"]
        if not math.isfinite(anisotropy):
            return
        log_a = math.log(max(anisotropy, 1.0))
        if self.log_anisotropy is None:
            self.log_anisotropy = log_a
        else:
            self.log_anisotropy = (
                self.smoothing * self.log_anisotropy + (1 - self.smoothing) * log_a
            )
        smoothed = math.exp(self.log_anisotropy)
        if self.a_hi is None:
            self.a_hi = smoothed
        p = self.get_p(smoothed)
        self.p = min(p, self.p) if self.never_increase else p
        self._apply()

    def get_last_p(self) -> list[float]:
        """Every param group's current ``p``."""
        return [group["p"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer and its parameters (tensors by reference, as
        ``Optimizer.state_dict``)."""
        return {
            key: value
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "_params")
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule (copying the EMA buffers onto their parameters' devices) and set
        every group's ``p`` to the restored value."""
        state = dict(state_dict)
        state["second_moments"] = {
            index: buffer.to(local(self._params[index]).device, copy=True)
            for index, buffer in state_dict["second_moments"].items()
        }
        state["last_measurement"] = dict(state_dict["last_measurement"])
        self.__dict__.update(state)
        self._apply()
