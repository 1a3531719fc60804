"""The report's figures: per section (learning curves, grokking, trajectories, gap against
lr * wd) and one forest plot of every claim of the suite.

Figures are ``matplotlib.figure.Figure`` objects saved straight to PNG (the Agg renderer), so no
pyplot state or GUI backend is involved.

Every function writes one PNG and returns ``True``, or returns ``False`` (and writes nothing)
when the section holds nothing it can draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from geoptim.bench import stats
from geoptim.bench.claims import ClaimRow, lr_wd, wd_sweep
from geoptim.bench.results import Section, Series

DPI = 100


def _layout(fig: Figure) -> None:
    """Fixed margins: ``tight_layout`` would draw every figure twice."""
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.88, wspace=0.28, hspace=0.5)


def x_axis(section: Section) -> str:
    """``"epoch"`` for epoch budgets, else ``"step"``."""
    return "epoch" if "epochs" in section.budget else "step"


def _band(ax: Axes, series: Series, metric: str, axis: str, scale: float = 1.0) -> bool:
    curve = series.curve(metric, axis)
    if curve is None:
        return False
    x, values = curve
    values = values * scale
    with np.errstate(all="ignore"):
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0) if len(values) > 1 else np.zeros_like(mean)
    (line,) = ax.plot(x, mean, label=f"{series.label} (n={series.n})", lw=1.4)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18, lw=0)
    return True


def learning_curves(section: Section, series: Sequence[Series], path: Path, title: str) -> bool:
    """Train NLL (log scale), test accuracy and, where recorded, test bits per character or the
    diffusion model's distance against steps or epochs, mean ± std band."""
    axis = x_axis(section)
    panels = [
        ("train_loss", "train NLL", 1.0),
        ("test_acc", "test accuracy (%)", 100.0),
        ("test_bpc", "test bits per char", 1.0),
        ("test_swd", "test sliced Wasserstein", 1.0),
        ("test_fd", "test Fréchet distance", 1.0),
    ]
    panels = [p for p in panels if any(s.curve(p[0], axis) is not None for s in series)]
    if not panels:
        return False
    fig = Figure(figsize=(5.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (metric, name, scale) in zip(axes[0], panels, strict=True):
        for s in series:
            _band(ax, s, metric, axis, scale)
        ax.set_xlabel(axis)
        ax.set_ylabel(name)
        if metric == "train_loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _layout(fig)
    fig.savefig(path, dpi=DPI)
    return True


def grokking_curves(section: Section, path: Path) -> bool:
    """Per series, train and test accuracy over steps, the mean gap shaded."""
    series = [s for s in section.series if s.curve("test_acc") is not None]
    if not series:
        return False
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    tau = next((t for s in series for t in s.extra("tau") if t is not None), None)
    for ax, s in zip(axes.flat, series, strict=False):
        for metric, style in (("train_acc", "--"), ("test_acc", "-")):
            x, values = s.curve(metric)
            ax.plot(x, np.nanmean(values, axis=0) * 100, style, label=metric.replace("_", " "))
        train = [v for v in s.extra("train_reach_step") if v is not None]
        gaps, observed = s.gaps()
        if train and len(gaps):
            start = float(np.mean(train))
            end = start + float(np.mean(gaps))
            ax.axvspan(start, end, color="tab:red", alpha=0.15)
            mark = "≥" if not observed.all() else ""
            ax.set_title(
                f"{s.label}: gap {mark}{np.mean(gaps):.0f} steps ({len(train)}/{s.n} fit)",
                fontsize=9,
            )
        else:
            ax.set_title(f"{s.label}: train never reached τ", fontsize=9)
        if tau is not None:
            ax.axhline(tau * 100, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"{section.title}: accuracy, mean over seeds (shaded: train reaches τ → test reaches τ)",
        fontsize=10,
    )
    _layout(fig)
    fig.savefig(path, dpi=DPI)
    return True


def trajectories(section: Section, path: Path) -> bool:
    """The 2-D iterates of each series' first run, over the loss contours when known."""
    drawn = [(s, s.extra("trajectory")[0]) for s in section.series if s.extra("trajectory")[0]]
    if not drawn:
        return False
    fig = Figure(figsize=(5.6, 5.0))
    ax = fig.subplots()
    points = np.concatenate([np.asarray(t, dtype=float)[:, :2] for _, t in drawn])
    matrix = _quadratic_matrix(section)
    if matrix is not None:
        lo, hi = points.min(axis=0), points.max(axis=0)
        pad = 0.1 * (hi - lo + 1e-12)
        gx, gy = np.meshgrid(
            np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200),
            np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200),
        )
        grid = np.stack([gx, gy], axis=-1)
        loss = 0.5 * np.einsum("...i,ij,...j->...", grid, matrix, grid)
        ax.contour(gx, gy, loss, levels=15, colors="lightgray", linewidths=0.7)
    for s, traj in drawn:
        t = np.asarray(traj, dtype=float)
        (line,) = ax.plot(t[:, 0], t[:, 1], lw=1.0, marker=".", ms=2, label=s.label)
        ax.plot(t[0, 0], t[0, 1], "o", color=line.get_color(), ms=5)
        ax.plot(t[-1, 0], t[-1, 1], "x", color=line.get_color(), ms=7)
    ax.set_xlabel("w₁")
    ax.set_ylabel("w₂")
    ax.set_title(f"{section.title}: trajectories (o start, x end)", fontsize=10)
    ax.legend(fontsize=7)
    _layout(fig)
    fig.savefig(path, dpi=DPI)
    return True


def _quadratic_matrix(section: Section) -> np.ndarray | None:
    """The matrix ``A`` of ``L(w) = w^T A w / 2`` for the records' named 2-D problem."""
    from geoptim.bench.tasks.quadratic import PROBLEMS

    for s in section.series:
        for problem in s.extra("problem"):
            if problem in PROBLEMS:
                return np.diag(PROBLEMS[problem])
    return None


def gap_vs_lr_wd(section: Section, path: Path) -> bool:
    """Grokking: per optimizer, the steps until test accuracy reaches τ (Kaplan-Meier median;
    hollow marker: more than half the runs never got there, drawn at the budget) and the mean
    grokking gap of the runs that fitted, against ``lr * wd`` of the weight-decay sweep."""
    sweep = wd_sweep(section)
    if not sweep:
        return False
    fig = Figure(figsize=(10.4, 3.9))
    ax_time, ax_gap = fig.subplots(1, 2)
    for optimizer in dict.fromkeys(s.optimizer for s in sweep):
        points = sorted((lr_wd(s), s) for s in sweep if s.optimizer == optimizer)
        x = np.array([p for p, _ in points])
        medians, censored, gaps = [], [], []
        for _, s in points:
            times, events = s.generalisation_times()
            median = stats.km_median(times, events)
            censored.append(not np.isfinite(median))
            medians.append(median if np.isfinite(median) else float(times.max()))
            gap = s.gaps()[0]
            gaps.append(float(np.mean(gap)) if len(gap) else np.nan)
        (line,) = ax_time.plot(x, medians, "-", lw=1.2, label=optimizer)
        done = ~np.array(censored)
        ax_time.plot(x[done], np.array(medians)[done], "o", color=line.get_color())
        ax_time.plot(x[~done], np.array(medians)[~done], "o", mfc="none", color=line.get_color())
        ax_gap.plot(x, gaps, "o-", lw=1.2, color=line.get_color(), label=optimizer)
    for ax, name in (
        (ax_time, "median steps to test acc ≥ τ"),
        (ax_gap, "mean gap of the runs that fit (steps)"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("lr · weight decay")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_time.legend(fontsize=7)
    fig.suptitle(
        f"{section.title}: time to generalise and gap against lr·wd (hollow: most "
        "runs never generalised; drawn at the budget)",
        fontsize=10,
    )
    _layout(fig)
    fig.savefig(path, dpi=DPI)
    return True


def forest(rows: Sequence[ClaimRow], path: Path, title: str) -> bool:
    """Every claim's effect with its 95% interval, one row each, one panel per metric; the
    shaded band is the row's equivalence margin, the diamond the paper's effect; a positive
    effect is the direction the claim states. An interval without finite bounds (no event in
    either arm) is dotted to the panel's edge."""
    rows = [row for row in rows if np.isfinite(row.effect)]
    if not rows:
        return False
    metrics = list(dict.fromkeys(row.metric for row in rows))
    heights = [sum(row.metric == m for row in rows) for m in metrics]
    fig = Figure(figsize=(10.0, 1.4 + 0.3 * sum(heights) + 0.6 * len(metrics)))
    axes = fig.subplots(len(metrics), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[
        :, 0
    ]
    colours = {
        "reproduced": "tab:green",
        "refuted": "tab:red",
        "equivalent": "tab:blue",
        "underpowered": "tab:gray",
        "not reproduced (powered)": "tab:orange",
    }
    for ax, metric in zip(axes, metrics, strict=True):
        chosen = [row for row in rows if row.metric == metric][::-1]
        y = np.arange(len(chosen))
        ends = [
            v
            for row in chosen
            for v in (row.low, row.high, row.paper_effect, row.margin, -row.margin)
            if np.isfinite(v)
        ]
        # A few huge effects (a control that barely trains) would squash every other row: the
        # axis spans the paper's scale and most intervals, and a row beyond it is drawn as an
        # arrow at the edge, labelled with its effect.
        scales = [abs(row.paper_effect) for row in chosen if np.isfinite(row.paper_effect)]
        span = max([*scales, 0.0]) * 4
        bounds = [v for row in chosen for v in (row.low, row.high) if np.isfinite(v)]
        span = max(span, 5 * float(np.median(np.abs(bounds or [0.0]))))
        left, right = max(min(ends), -span), min(max(ends), span)
        pad = 0.05 * (right - left)
        left, right = left - pad, right + pad
        for k, row in enumerate(chosen):
            colour = colours.get(row.verdict, "black")
            ax.fill_between(
                [-row.margin, row.margin], k - 0.4, k + 0.4, color="tab:blue", alpha=0.1, lw=0
            )
            low, high = max(row.low, left), min(row.high, right)
            unbounded = not (np.isfinite(row.low) and np.isfinite(row.high))
            ax.plot([low, high], [k, k], color=colour, lw=2, ls=":" if unbounded else "-")
            if left <= row.effect <= right:
                ax.plot(row.effect, k, "o", color=colour, ms=5)
            else:
                edge, marker, align = (
                    (right, ">", "right") if row.effect > right else (left, "<", "left")
                )
                ax.plot(edge, k, marker, color=colour, ms=7)
                ax.annotate(
                    f"{row.effect:+.3g}",
                    (edge, k),
                    xytext=(-8 if align == "right" else 8, 4),
                    textcoords="offset points",
                    ha=align,
                    fontsize=7,
                    color=colour,
                )
            ax.plot(row.paper_effect, k, "D", color="black", ms=4, mfc="none")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(left, right)
        ax.set_yticks(y)
        ax.set_yticklabels([_short(row) for row in chosen], fontsize=7)
        ax.set_xlabel(f"effect: {metric}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    handles = [axes[0].plot([], [], "o-", color=c, label=v)[0] for v, c in colours.items()]
    handles.append(axes[0].plot([], [], "D", color="black", mfc="none", label="paper's effect")[0])
    height = fig.get_figheight()
    fig.legend(
        handles=handles,
        fontsize=7,
        loc="upper center",
        ncol=6,
        bbox_to_anchor=(0.5, 1 - 0.4 / height),
        frameon=False,
    )
    fig.suptitle(f"{title} (shaded: equivalence margin)", fontsize=10)
    fig.subplots_adjust(
        left=0.42,
        right=0.98,
        bottom=0.55 / height,
        top=1 - 0.8 / height,
        hspace=0.9 / height * len(metrics),
    )
    fig.savefig(path, dpi=DPI)
    return True


def _short(row: ClaimRow) -> str:
    text = f"{row.claim} [{row.task}]"
    return text if len(text) <= 80 else text[:77] + "..."


PREMISE_PANELS = (
    ("anisotropy", "anisotropy λmax / mean|λ|"),
    ("lambda_max", "λmax"),
    ("bulk", "bulk mean|λ|"),
)


def premise(runs: Sequence[tuple[str, int, list[dict]]], path: Path, title: str) -> bool:
    """The premise figure of one task: anisotropy, λmax and the bulk (log scales) against the
    epoch, one line per ``(optimizer, seed, curvature records)`` run, one colour per optimizer."""
    from geoptim.analysis.curvature import measure

    runs = [run for run in runs if len(run[2]) >= 2]
    if not runs:
        return False
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(run[0] for run in runs))}
    fig = Figure(figsize=(5.0 * len(PREMISE_PANELS), 3.8))
    axes = fig.subplots(1, len(PREMISE_PANELS), squeeze=False)[0]
    for ax, (name, label) in zip(axes, PREMISE_PANELS, strict=True):
        labelled = set()
        for optimizer, _, records in runs:
            epochs = [entry["epoch"] for entry in records]
            values = [measure(entry, name) for entry in records]
            ax.plot(
                epochs,
                values,
                "o-",
                color=colours[optimizer],
                alpha=0.75,
                markersize=3,
                label=None if optimizer in labelled else optimizer,
            )
            labelled.add(optimizer)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _layout(fig)
    fig.savefig(path, dpi=DPI)
    return True
