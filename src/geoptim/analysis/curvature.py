"""Curvature over training: a callback that records Hessian spectra at chosen epochs.

At each chosen epoch :class:`CurvatureRecorder` builds one
:class:`~geoptim.analysis.hvp.HessianOperator` on a fixed batch and records

* the ``k`` largest eigenvalues (Lanczos), the trace (Hutchinson) and the SLQ quadrature nodes and
  weights of the eigenvalue density;
* ``anisotropy = lambda_max / mean |lambda|`` with ``mean |lambda| = sum_j w_j |theta_j|`` from the
  SLQ quadrature: 1 for an isotropic Hessian, large for a few sharp directions over a flat bulk;
* ``top_fraction = lambda_max / tr(H)`` (the share of the curvature in the sharpest direction),
  ``lambda_min`` (the smallest SLQ node) and ``negative_mass`` (the SLQ weight of nodes below
  ``-0.01 lambda_max``: the share of clearly negative curvature).

:func:`measure` reads one of :data:`TREND_MEASURES` off a record: the benchmark's report tests
the premise of the cosine p schedule with them (:func:`geoptim.bench.report.run_trends`).

The Hessian is taken in training mode by default (``mode="train"``: BatchNorm normalises with the
batch's own statistics, the loss the optimizer sees) or in eval mode (``mode="eval"``: running
statistics); the model's mode is restored afterwards and its running statistics are never
written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from geoptim.analysis.hvp import Data, HessianOperator, LossFn
from geoptim.analysis.spectrum import spectral_density, top_eigenpairs, trace_estimate

MODES = ("train", "eval")


def summarize(
    top: list[float], trace: float, nodes: torch.Tensor, weights: torch.Tensor
) -> dict[str, float]:
    """The anisotropy measures of the module docstring from one epoch's spectra."""
    lam_max = max(top[0], float(nodes.max()))
    mean_abs = float((weights * nodes.abs()).sum())
    return {
        "anisotropy": lam_max / mean_abs if mean_abs > 0 else float("inf"),
        "top_fraction": lam_max / trace if trace != 0 else float("nan"),
        "lambda_min": float(nodes.min()),
        "negative_mass": float(weights[nodes < -0.01 * abs(lam_max)].sum()),
    }


class CurvatureRecorder:
    """``on_epoch_end`` callback: :meth:`record` at every epoch in ``at``.

    ``data``: the batch (or batches) the Hessian is taken on, e.g. ``task_data.hessian_batch(n)``.
    The top ``k`` eigenvalues stop at residual ``eig_tol`` relative (or ``eig_max_iter`` Lanczos
    steps), the trace at ``trace_rtol`` relative standard error (or ``trace_samples`` probes),
    and the density uses ``slq_probes`` probes of ``slq_steps`` Lanczos steps.
    ``records`` holds one JSON-able dict per recorded epoch: ``epoch``, ``top_eigenvalues``,
    ``trace``, ``trace_std_error``, ``nodes``, ``weights``, the :func:`summarize` measures,
    ``n_params``, ``hessian_products`` and ``seconds``. Epoch 0 (before training) is recorded by
    calling :meth:`record` on the initial model. ``progress`` receives one line per record.
    """

    def __init__(
        self,
        loss_fn: LossFn,
        data: Data,
        at: Iterable[int],
        *,
        k: int = 3,
        eig_tol: float = 1e-3,
        eig_max_iter: int = 60,
        trace_rtol: float = 0.02,
        trace_samples: int = 30,
        slq_probes: int = 2,
        slq_steps: int = 32,
        mode: str = "train",
        seed: int = 0,
        method: str = "reverse",
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.loss_fn = loss_fn
        self.data = data
        self.at = set(at)
        self.k = k
        self.eig_tol = eig_tol
        self.eig_max_iter = eig_max_iter
        self.trace_rtol = trace_rtol
        self.trace_samples = trace_samples
        self.slq_probes = slq_probes
        self.slq_steps = slq_steps
        self.mode = mode
        self.seed = seed
        self.method = method
        self.progress = progress
        self.records: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch: int, model: nn.Module, optimizer: Any) -> None:
        if epoch in self.at:
            self.record(epoch, model)

    def record(self, epoch: int, model: nn.Module) -> dict[str, Any]:
        """Measure the spectra of ``model`` now and append them as epoch ``epoch``."""
        start = time.perf_counter()
        was_training = model.training
        model.train(self.mode == "train")
        try:
            op = HessianOperator(model, self.loss_fn, self.data, method=self.method)
            top = top_eigenpairs(
                op, self.k, tol=self.eig_tol, max_iter=self.eig_max_iter, seed=self.seed
            )
            trace = trace_estimate(
                op, rtol=self.trace_rtol, max_samples=self.trace_samples, seed=self.seed
            )
            density = spectral_density(
                op, n_probes=self.slq_probes, steps=self.slq_steps, seed=self.seed
            )
        finally:
            model.train(was_training)
        values = top.values.tolist()
        entry: dict[str, Any] = {
            "epoch": epoch,
            "top_eigenvalues": values,
            "top_converged": top.converged,
            "trace": trace.value,
            "trace_std_error": trace.std_error,
            "nodes": density.nodes.tolist(),
            "weights": density.weights.tolist(),
            **summarize(values, trace.value, density.nodes, density.weights),
            "n_params": op.size,
            "hessian_products": op.n_products,
            "seconds": round(time.perf_counter() - start, 3),
        }
        self.records.append(entry)
        if self.progress is not None:
            self.progress(
                f"epoch {epoch:>3}: lambda_max {values[0]:.4g}  trace {trace.value:.4g} "
                f"(+-{trace.std_error:.2g})  anisotropy {entry['anisotropy']:.3g}  "
                f"negative mass {entry['negative_mass']:.3f}  [{entry['seconds']:.1f} s]"
            )
        return entry


# ------------------------------------------------------------------------------------------------
# The premise of the cosine p schedule: does the anisotropy fall over training?

TREND_MEASURES = ("anisotropy", "lambda_max", "bulk")
"""What the premise test follows: ``lambda_max / mean|lambda|``, the top eigenvalue and the
bulk scale ``mean|lambda|`` (the SLQ quadrature ``sum_j w_j |theta_j|``)."""


def measure(entry: dict[str, Any], name: str) -> float:
    """One of :data:`TREND_MEASURES` from a :class:`CurvatureRecorder` record."""
    if name == "anisotropy":
        return float(entry["anisotropy"])
    if name == "lambda_max":
        return float(max(entry["top_eigenvalues"][0], max(entry["nodes"])))
    if name == "bulk":
        return float(sum(w * abs(t) for w, t in zip(entry["weights"], entry["nodes"], strict=True)))
    raise ValueError(f"unknown measure {name!r}; known: {', '.join(TREND_MEASURES)}")
