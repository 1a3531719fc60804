"""Curvature and training-dynamics analysis.

* :mod:`~geoptim.analysis.hvp`: Hessian-vector products of a model's loss (``torch.func``).
* :mod:`~geoptim.analysis.spectrum`: top eigenvalues (Lanczos), trace (Hutchinson), eigenvalue
  density (stochastic Lanczos quadrature).
* :mod:`~geoptim.analysis.monitors`: training-loop callbacks (momentum tracing, weight quantile,
  weight/update cosine, weight norms against the SepNorm fixed point, update RMS).
* :mod:`~geoptim.analysis.curvature`: the per-epoch curvature recorder (a callback).
* :mod:`~geoptim.analysis.plots`: the spectral-density and curvature figures.

The benchmark builds its curvature-evolution and momentum-tracing experiments on these
(:mod:`geoptim.bench.experiments`; the command ``geoptim curvature``).

Every callback works with :func:`geoptim.bench.training.train` (``task.run(...,
callbacks=[...])``) or any loop that calls ``on_step(step, model, optimizer, loss)`` after each
optimizer step and ``on_epoch_end(epoch, model, optimizer)`` after each epoch.
"""

from geoptim.analysis.curvature import CurvatureRecorder
from geoptim.analysis.hvp import HessianOperator
from geoptim.analysis.monitors import (
    MomentumTracing,
    UpdateCosine,
    UpdateRMS,
    WeightNorms,
    WeightQuantile,
    fixed_point_norm,
)
from geoptim.analysis.spectrum import (
    Eigenpairs,
    SpectralDensity,
    TraceEstimate,
    hessian_density,
    hessian_top_eigenvalues,
    hessian_trace,
    spectral_density,
    top_eigenpairs,
    trace_estimate,
)

__all__ = [
    "CurvatureRecorder",
    "Eigenpairs",
    "HessianOperator",
    "MomentumTracing",
    "SpectralDensity",
    "TraceEstimate",
    "UpdateCosine",
    "UpdateRMS",
    "WeightNorms",
    "WeightQuantile",
    "fixed_point_norm",
    "hessian_density",
    "hessian_top_eigenvalues",
    "hessian_trace",
    "spectral_density",
    "top_eigenpairs",
    "trace_estimate",
]
