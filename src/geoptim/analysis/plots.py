"""Figures of the curvature and momentum-tracing experiments (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from geoptim.analysis.spectrum import gaussian_smoothing

DENSITY_FLOOR = 1e-6


def density_grid(
    records: Sequence[Mapping[str, Any]], grid_size: int = 600, sigma_rel: float = 0.01
) -> tuple[np.ndarray, np.ndarray, float]:
    """Every record's SLQ density smoothed on one grid spanning all their nodes: ``(grid,
    densities (records x grid), sigma)`` with ``sigma = sigma_rel * span``."""
    nodes = [torch.tensor(r["nodes"], dtype=torch.float64) for r in records]
    lo = min(float(n.min()) for n in nodes)
    hi = max(float(n.max()) for n in nodes)
    sigma = sigma_rel * max(hi - lo, 1e-12)
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size, dtype=torch.float64)
    densities = [
        gaussian_smoothing(n, torch.tensor(r["weights"], dtype=torch.float64), grid, sigma)
        for n, r in zip(nodes, records, strict=True)
    ]
    return grid.numpy(), torch.stack(densities).numpy(), sigma


def plot_curvature(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Three panels: the eigenvalue density of every recorded epoch (log density axis, one
    curve per epoch, as figure 1 of the LPSGD paper), the same as an epoch x eigenvalue map,
    and the anisotropy ``lambda_max / mean|lambda|`` with ``lambda_max`` over training."""
    grid, densities, _ = density_grid(records)
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = plt.cm.viridis(np.linspace(0, 1, len(records)))
    ax = axes[0]
    for epoch, density, color in zip(epochs, densities, colors, strict=True):
        ax.semilogy(grid, np.maximum(density, DENSITY_FLOOR), color=color, label=f"epoch {epoch}")
    ax.set_ylim(bottom=DENSITY_FLOOR)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)")
    ax.set_title("Hessian eigenvalue density (SLQ)")
    ax.legend(fontsize=8)

    ax = axes[1]
    mesh = ax.pcolormesh(
        grid,
        np.arange(len(epochs)),
        np.log10(np.maximum(densities, DENSITY_FLOOR)),
        shading="nearest",
        cmap="magma",
    )
    ax.set_yticks(np.arange(len(epochs)), [str(e) for e in epochs])
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("epoch")
    ax.set_title("log10 density over training")
    fig.colorbar(mesh, ax=ax)

    ax = axes[2]
    ax.semilogy(
        epochs,
        [r["anisotropy"] for r in records],
        "o-",
        color="C3",
        label="anisotropy  λmax / mean|λ|",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("anisotropy (log)", color="C3")
    twin = ax.twinx()
    twin.plot(epochs, [r["top_eigenvalues"][0] for r in records], "s--", color="C0", label="λmax")
    twin.plot(epochs, [-r["lambda_min"] for r in records], "^:", color="C2", label="-λmin (SLQ)")
    twin.set_ylabel("eigenvalue")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")
    ax.set_title("curvature anisotropy")
    return _save(fig, path, title)


def _save(fig: Any, path: str | Path, title: str | None) -> Path:
    """Title, lay out, write (dpi 120) and close ``fig``; return the path written."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if window <= 1 or array.size < window:
        return array
    return np.convolve(array, np.ones(window) / window, mode="same")


def plot_momentum_tracing(
    runs: Mapping[str, Mapping[str, Mapping[str, list[Any]]]],
    path: str | Path,
    title: str = "",
    window: int = 15,
) -> Path:
    """Three panels, one line per run (``{label: {"tracing": ..., "quantile": ...,
    "cosine": ...}}`` monitor histories), as figure 2 of the SepNorm paper: cumulative count of
    BatchNorm biases hit by momentum tracing, the 95% quantile of ``|w|``, and the cosine between
    the 5% largest weights and their updates (moving average over ``window`` steps)."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for i, (label, run) in enumerate(runs.items()):
        color = f"C{i}"
        tracing = run["tracing"]
        axes[0].plot(tracing["step"], np.cumsum(tracing["bn_bias"]), color=color, label=label)
        axes[1].plot(run["quantile"]["step"], run["quantile"]["quantile"], color=color, label=label)
        axes[2].plot(
            run["cosine"]["step"],
            _smooth(run["cosine"]["cosine"], window),
            color=color,
            label=label,
        )
    axes[0].set_title("momentum tracing: BN biases (cumulative)")
    axes[0].set_ylabel("count")
    axes[1].set_title("95% quantile of |w|")
    axes[2].set_title(f"cos(top-5% weights, update), {window}-step mean")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return _save(fig, path, title)
