"""``DIR/report.md`` (+ PNGs and ``claims.json``), rebuilt from the records alone.

First the claims table (effect, 95% interval, minimum detectable effect, verdict, n, the rule) with
a forest plot of every claim. Then per task: the end-of-budget summary (test accuracy, test NLL, the
mean test accuracy over the run), test accuracy and train NLL at checkpoints (mean ± sample std over
seeds, best mean in bold), the language model's test bits per character and the diffusion model's
test distances (sliced Wasserstein, MMD², Fréchet) at the same checkpoints with their floors, time
to a target accuracy in steps and seconds, learning curves; grokking times and gaps (censored runs
counted), gap against lr·wd; quadratic trajectories. Analysis records: per task with curvature runs,
the premise of the cosine p schedule (does the Hessian's anisotropy fall over training? a figure and
a sentence from a sign test over the runs), then single runs' spectra and momentum tracing.
Validation metrics are never reported as results (they are for tuning).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from geoptim.bench import claims, plots, stats
from geoptim.bench.records import (
    canonical_json,
    records_dir,
    select_records,
    write_json_atomic,
    write_text_atomic,
)
from geoptim.bench.results import Section, Series, fmt, group, mean_std

FOREST = "claims_forest.png"
CHECKPOINT_FRACTIONS = (0.25, 0.5, 1.0)
TARGET_FRACTION = 0.95
TARGET_RULE = (
    f"target = {TARGET_FRACTION:.0%} of the best final mean test accuracy on the task, rounded "
    "down to a whole percent; steps and training seconds (evaluation excluded) of the first "
    "checkpoint at or above it, mean ± std over the runs that reached it"
)


def build_report(
    out_dir: str | Path, suite: str | None = None, accept_other_versions: bool = False
) -> Path:
    """Write ``out_dir/report.md`` (and its figures, ``claims.json``) for the records of
    ``suite`` (:func:`~geoptim.bench.records.select_records`); return its path.

    Raises ``FileNotFoundError`` when ``out_dir`` holds no such record.
    """
    out_dir = Path(out_dir)
    selection = select_records(out_dir, suite, accept_other_versions)
    records = selection.records
    if not records:
        of_suite = f" of suite {selection.suite!r}" if selection.suite else ""
        raise FileNotFoundError(f"no records{of_suite} in {records_dir(out_dir)}")
    training = [r for r in records if r["config"].get("kind", "train") == "train"]
    analysis = [r for r in records if r["config"].get("kind", "train") != "train"]
    sections = group(training)
    rows = claims.evaluate(sections)
    write_json_atomic(out_dir / "claims.json", [row.to_dict() for row in rows])
    notes = "".join(f"\n**Left out:** {note}.\n" for note in selection.notes())
    parts = [_header(records) + notes, "## Claims\n", claims.markdown(rows)]
    if plots.forest(rows, out_dir / FOREST, "Every claim: effect and 95% interval"):
        parts += [f"![forest plot of every claim]({FOREST})", ""]
    for section in sections:
        parts.append(_section(section, out_dir))
    if analysis:
        parts.append(_analysis_section(analysis, out_dir))
    path = out_dir / "report.md"
    write_text_atomic(path, "\n".join(parts))
    return path


def _header(records: list[dict]) -> str:
    suites = sorted({r.get("spec", {}).get("suite", "") for r in records} - {""})
    versions = sorted({canonical_json(r.get("versions", {})) for r in records})
    wall = sum(r.get("wall_time_s") or 0.0 for r in records)
    return (
        "# geoptim benchmark report\n\n"
        f"{len(records)} runs (suite: {', '.join(suites) or 'n/a'}), {wall / 60:.1f} min of "
        f"run time in all. Versions: {'; '.join(versions)}.\n\n"
        "Every number is the mean ± sample standard deviation (ddof 1) over seeds; n is the "
        "number of seeds (seed k: the same initialisation and data order for every optimizer). "
        "Best mean per column in **bold**. All metrics are on the held-out test split. Built "
        "from the records alone (`geoptim report DIR` rebuilds it).\n"
    )


# --------------------------------------------------------------------------------------------
# Tables


def checkpoints(section: Section) -> list[float]:
    """The x values (steps or epochs) of the table's columns: the recorded checkpoints closest
    to 25%, 50% and 100% of the run."""
    axis = plots.x_axis(section)
    for s in section.series:
        curve = s.curve("train_loss", axis) or s.curve("test_acc", axis)
        if curve is not None:
            x = curve[0]
            picks = [x[int(np.argmin(np.abs(x - f * x[-1])))] for f in CHECKPOINT_FRACTIONS]
            return sorted(set(picks))
    return []


def values_at(series: Series, metric: str, axis: str, x: float) -> list[float]:
    """Per seed, the metric at the last checkpoint at or before ``x``."""
    curve = series.curve(metric, axis)
    if curve is None:
        return []
    xs, values = curve
    index = int(np.searchsorted(xs, x, side="right")) - 1
    return list(values[:, index]) if index >= 0 else []


def metric_table(
    section: Section, metric: str, scale: float, digits: int, higher_is_better: bool
) -> str | None:
    """Rows: series; columns: checkpoints. ``None`` when the metric was not recorded."""
    axis = plots.x_axis(section)
    cols = checkpoints(section)
    cells = {
        s.label: [mean_std(np.array(values_at(s, metric, axis, x)) * scale) for x in cols]
        for s in section.series
    }
    if not cols or all(c[2] == 0 for row in cells.values() for c in row):
        return None
    header = "| optimizer | n | " + " | ".join(f"{axis} {x:g}" for x in cols) + " |"
    lines = [header, "|---" * (len(cols) + 2) + "|"]
    pick = max if higher_is_better else min
    best = []  # per column, the best mean as shown (ties at the shown precision all win)
    for j in range(len(cols)):
        means = [round(row[j][0], digits) for row in cells.values() if row[j][2]]
        best.append(pick(means) if means else None)
    for s in section.series:
        shown = []
        for j, (mean, std, count) in enumerate(cells[s.label]):
            text = fmt(mean, std, digits)
            if count and round(mean, digits) == best[j]:
                text = f"**{text}**"
            shown.append(text)
        note = f" ({s.diverged()} diverged)" if s.diverged() else ""
        lines.append(f"| {s.label}{note} | {s.n} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


LOWER_IS_BETTER = (
    ("test_bpc", "Test bits per character", 3),
    ("test_swd", "Test sliced Wasserstein distance", 4),
    ("test_mmd2", "Test MMD² (Gaussian kernel)", 5),
    ("test_fd", "Test Fréchet distance (features of the task's digits classifier)", 2),
)
"""The language model's and the diffusion model's test metrics: (key, title, decimals)."""


def floor_note(section: Section, metric: str) -> str:
    """The metric's floor recorded by the task (``extra["floor_<metric>"]``: the training data
    against the test data), or ``""``."""
    floors = [f for s in section.series for f in s.extra(f"floor_{metric}") if f is not None]
    if not floors:
        return ""
    return f"Floor (the training data itself against the test data): {floors[0]:.4g}.\n"


def summary_table(section: Section) -> str | None:
    """At the end of the budget: test accuracy, test NLL and the mean test accuracy over the
    run (the area under its learning curve over the x range), per series."""
    if not any(np.isfinite(s.final("test_acc")).any() for s in section.series):
        return None
    axis = plots.x_axis(section)
    lines = [
        "| optimizer | n | test acc (%) | test NLL | mean test acc over the run (%) |",
        "|---|---|---|---|---|",
    ]
    for s in section.series:
        acc = fmt(*mean_std(s.final("test_acc") * 100)[:2], 2)
        nll = fmt(*mean_std(s.final("test_loss"))[:2], 4)
        area = fmt(*mean_std(s.curve_area("test_acc", axis) * 100)[:2], 2)
        lines.append(f"| {s.label} | {s.n} | {acc} | {nll} | {area} |")
    return "\n".join(lines)


def time_to_target(section: Section) -> tuple[float, str] | None:
    """The target accuracy and a table of steps / seconds to reach it, with steps/s."""
    finals = [mean_std(s.final("test_acc"))[0] for s in section.series]
    finals = [f for f in finals if math.isfinite(f)]
    if not finals:
        return None
    target = math.floor(TARGET_FRACTION * max(finals) * 100) / 100
    lines = ["| optimizer | reached | steps | seconds | steps/s |", "|---|---|---|---|---|"]
    for s in section.series:
        steps, seconds = [], []
        for record in s.records:
            curves = record["result"].get("curves") or {}
            acc, step, time_s = (curves.get(k) or [] for k in ("test_acc", "step", "time_s"))
            hit = next((i for i, a in enumerate(acc) if a is not None and a >= target), None)
            if hit is not None:
                steps.append(step[hit] if hit < len(step) else math.nan)
                seconds.append(time_s[hit] if hit < len(time_s) else math.nan)
        rate = mean_std([r.get("steps_per_s") or math.nan for r in s.records])
        lines.append(
            f"| {s.label} | {len(steps)}/{s.n} | {fmt(*mean_std(steps)[:2], 0)} | "
            f"{fmt(*mean_std(seconds)[:2], 2)} | {fmt(*rate[:2], 0)} |"
        )
    return target, "\n".join(lines)


def grokking_table(section: Section) -> str | None:
    """Per series: runs that fit (train ≥ τ), runs that generalised (test ≥ τ), the
    Kaplan-Meier median of the steps to generalise (censored at the budget) and the gap of the
    runs that fit."""
    if not any(any(e is not None for e in s.extra("tau")) for s in section.series):
        return None
    tau = next(t for s in section.series for t in s.extra("tau") if t is not None)
    lines = [
        f"τ = {tau}. *Steps to test ≥ τ*: Kaplan-Meier median over all runs, a run that "
        "never got there (fitted or not) censored at its budget (“>”: more than half never "
        "did). *Gap*: test-reach minus train-reach step of the runs that fit; “≥” counts "
        "those whose test accuracy never reached τ (gap taken to the budget, a lower "
        "bound). The claims test the steps to test ≥ τ (log-rank).",
        "",
        "| optimizer | lr·wd | n | fit | generalised | steps to test ≥ τ | gap (steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in section.series:
        times, events = s.generalisation_times()
        median = stats.km_median(times, events)
        shown = f"{median:.0f}" if np.isfinite(median) else f"> {times.max():.0f}"
        gaps, observed = s.gaps()
        mark = f", {int((~observed).sum())} ≥" if (~observed).any() else ""
        lines.append(
            f"| {s.label} | {claims.lr_wd(s):.3g} | {s.n} | {len(gaps)}/{s.n} | "
            f"{int(events.sum())}/{s.n} | {shown} | {fmt(*mean_std(gaps)[:2], 0)}"
            f"{mark} |"
        )
    return "\n".join(lines)


def agr_table(section: Section) -> str | None:
    """Per AGR series, the measured relative change AGR makes to the update
    (``extra.agr_relative_change``: ||update with AGR - without|| / ||without||, median over
    probe steps), over its runs."""
    rows = []
    for s in section.series:
        changes = [c for c in s.extra("agr_relative_change") if c is not None]
        if changes:
            mean, std, n = mean_std(np.array(changes) * 100)
            rows.append(f"| {s.label} | {n} | {fmt(mean, std, 3)} | {np.median(changes):.3%} |")
    if not rows:
        return None
    return "\n".join(
        ["| optimizer | runs | relative change (%) | median |", "|---|---|---|---|", *rows]
    )


def quadratic_table(section: Section) -> str | None:
    if not any(any(e is not None for e in s.extra("steps_to_target")) for s in section.series):
        return None
    target = next(
        (t for s in section.series for t in s.extra("target_loss") if t is not None), None
    )
    lines = [
        f"Steps until the loss first falls below {target:.3g} (reached / runs), and the final "
        "loss.",
        "",
        "| optimizer | n | steps to target | final loss |",
        "|---|---|---|---|",
    ]
    for s in section.series:
        reached = [v for v in s.extra("steps_to_target") if v is not None]
        final = mean_std(s.final("train_loss"))
        lines.append(
            f"| {s.label} | {s.n} | {fmt(*mean_std(reached)[:2], 0)} "
            f"({len(reached)}/{s.n}) | {final[0]:.3g} |"
        )
    return "\n".join(lines)


def hparams_table(section: Section) -> str:
    lines = ["| optimizer | preset | hyper-parameters | budget |", "|---|---|---|---|"]
    for s in section.series:
        lines.append(
            f"| {s.label} | {s.preset} | `{canonical_json(s.hparams)}` | "
            f"`{canonical_json(section.budget)}` |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Sections


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _figure_groups(section: Section) -> list[tuple[str, list[Series]]]:
    """The series drawn together: every preset-as-is series, then per hyper-parameter varied
    on purpose (``p_max``, ``agr_until``) the series that vary it with their base series."""
    groups = [("", [s for s in section.series if s.is_base])]
    keys = sorted({key for s in section.series for key in s.variant})
    for key in keys:
        varied = [s for s in section.series if key in s.variant]
        optimizers = {s.optimizer for s in varied}
        base = [s for s in section.series if s.is_base and s.optimizer in optimizers]
        groups.append((key, base + varied))
    unique: list[tuple[str, list[Series]]] = []
    for key, members in groups:
        if members and all(members != kept for _, kept in unique):
            unique.append((key, members))  # variants that set several keys: one figure
    return unique


def _section(section: Section, out_dir: Path) -> str:
    slug = _slug(section.title)
    parts = [f"## Task: {section.title}\n"]
    summary = summary_table(section)
    if summary and section.task != "grokking":
        parts += ["### End of the budget\n", summary, ""]
    acc = metric_table(section, "test_acc", 100.0, 2, higher_is_better=True)
    if acc:
        parts += ["### Test accuracy (%)\n", acc, ""]
    nll = metric_table(section, "train_loss", 1.0, 4, higher_is_better=False)
    if nll:
        parts += ["### Train NLL\n" if acc else "### Train loss\n", nll, ""]
    for metric, title, digits in LOWER_IS_BETTER:
        table = metric_table(section, metric, 1.0, digits, higher_is_better=False)
        if table:
            floor = floor_note(section, metric)
            parts += [f"### {title} (lower is better)\n", *([floor] if floor else []), table, ""]
    if section.task == "grokking":
        table = grokking_table(section)
        if table:
            parts += ["### Grokking gap\n", table, ""]
        name = f"{slug}_grokking.png"
        if plots.grokking_curves(section, out_dir / name):
            parts += [f"![grokking curves]({name})", ""]
        name = f"{slug}_gap_vs_lr_wd.png"
        if plots.gap_vs_lr_wd(section, out_dir / name):
            parts += [f"![grokking against lr·wd]({name})", ""]
    agr = agr_table(section)
    if agr:
        parts += ["### How much AGR changes the update\n", agr, ""]
    quad = quadratic_table(section)
    if quad:
        parts += ["### Steps to target loss\n", quad, ""]
    name = f"{slug}_trajectories.png"
    if plots.trajectories(section, out_dir / name):
        parts += [f"![trajectories]({name})", ""]
    ttt = time_to_target(section)
    if ttt and section.task != "quadratic":
        target, table = ttt
        parts += [f"### Time to {target:.0%} test accuracy\n", f"Rule: {TARGET_RULE}.\n", table, ""]
    for key, members in _figure_groups(section):
        name = f"{slug}_curves{'_' + _slug(key) if key else ''}.png"
        title = f"{section.title}: learning curves" + (f" ({key} varied)" if key else "")
        if plots.learning_curves(section, members, out_dir / name, title):
            parts += [f"![{title}]({name})", ""]
    parts += [
        "<details><summary>Hyper-parameters</summary>\n",
        hparams_table(section),
        "\n</details>\n",
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Analysis experiments: curvature evolution (the premise of the cosine p schedule, per task;
# single runs in detail) and momentum tracing

PREMISE_MIN_RUNS = 3
"""A task with this many curvature runs gets the premise figure and sentence only; one with
fewer also gets every run's spectrum figure and table."""
PREMISE_RULE = (
    "per run, Spearman's ρ of the measure against the epoch (ρ < 0: it falls over training); "
    "over the runs, an exact two-sided sign test of how many fall against how many rise; the "
    "verdict *falls* or *rises* at p < 0.05, else *no consistent trend*"
)


def run_trends(records: list[dict[str, Any]]) -> dict[str, float]:
    r"""Per measure of :data:`~geoptim.analysis.curvature.TREND_MEASURES`, the Spearman
    :math:`\rho` of its values against the epoch over one run's curvature records: negative when
    it falls over training."""
    from geoptim.analysis.curvature import TREND_MEASURES, measure

    epochs = [float(entry["epoch"]) for entry in records]
    return {
        name: stats.spearman(epochs, [measure(e, name) for e in records]) for name in TREND_MEASURES
    }


def premise_sentence(task: str, runs: list[tuple[str, int, list[dict]]]) -> str:
    """The premise's answer on one task, from its runs ``(optimizer, seed, records)``."""
    from geoptim.analysis.curvature import TREND_MEASURES

    trends = [(optimizer, run_trends(records)) for optimizer, _, records in runs]
    tests = {name: stats.sign_test([t[name] for _, t in trends]) for name in TREND_MEASURES}
    falls, rises, p = tests["anisotropy"]
    verdict = "shows no consistent trend over training"
    if p < 0.05:
        verdict = (
            "falls over training, as the paper assumes"
            if falls > rises
            else "rises over training, against the premise"
        )
    per_optimizer = ", ".join(
        f"{optimizer} {sum(t['anisotropy'] < 0 for o, t in trends if o == optimizer)}/"
        f"{sum(o == optimizer for o, _ in trends)}"
        for optimizer in dict.fromkeys(o for o, _ in trends)
    )
    others = "; ".join(
        f"{label} falls in {falling} and rises in {rising} (p = {p_value:.2g})"
        for (falling, rising, p_value), label in (
            (tests["lambda_max"], "λmax"),
            (tests["bulk"], "the bulk mean|λ|"),
        )
    )
    first = np.mean([records[0]["negative_mass"] for _, _, records in runs])
    last = np.mean([records[-1]["negative_mass"] for _, _, records in runs])
    return (
        f"**{task}: the anisotropy {verdict}.** λmax / mean|λ| falls over training in {falls} of "
        f"{len(runs)} runs and rises in {rises} (falls: {per_optimizer}), sign test p = {p:.2g}; "
        f"{others}; the negative mass goes from {first:.3f} to {last:.3f} (mean over runs, first "
        "and last epoch measured)."
    )


def _premise_section(records: list[dict], out_dir: Path) -> str:
    """Per task, the premise figure (:func:`geoptim.bench.plots.premise`) and sentence."""
    parts = [
        "### Does curvature anisotropy fall over training? (the cosine p schedule's premise)\n",
        f"Full-batch Hessian of a fixed training subset at the epochs measured. Rule: "
        f"{PREMISE_RULE}.\n",
    ]
    by_task: dict[str, list[tuple[str, int, list[dict]]]] = {}
    for record in sorted(records, key=lambda r: (r["task_label"], r["label"], r["seed"])):
        run = (record["label"], int(record["seed"]), record["result"]["records"])
        by_task.setdefault(record["task_label"], []).append(run)
    for task, runs in by_task.items():
        config = next(r["result"]["config"] for r in records if r["task_label"] == task)
        name = f"premise_{_slug(task)}.png"
        title = (
            f"{task}: Hessian over training ({config['mode']} mode, "
            f"{config['hessian_samples']} examples, {config['slq_probes']} SLQ probes)"
        )
        parts.append(premise_sentence(task, runs) + "\n")
        if plots.premise(runs, out_dir / name, title):
            parts += [f"![{title}]({name})", ""]
    return "\n".join(parts)


def _analysis_section(records: list[dict], out_dir: Path) -> str:
    """Figures and tables of the ``curvature`` and ``momentum_tracing`` records, redrawn from
    the records (:mod:`geoptim.analysis.plots`)."""
    from geoptim.analysis.plots import plot_curvature, plot_momentum_tracing
    from geoptim.bench.experiments import curvature_title, tracing_title

    parts = ["## Curvature and training dynamics\n"]
    curvature = [r for r in records if r["config"]["kind"] == "curvature"]
    if curvature:
        parts.append(_premise_section(curvature, out_dir))
    runs_per_task: dict[str, int] = {}
    for record in curvature:
        runs_per_task[record["task_label"]] = runs_per_task.get(record["task_label"], 0) + 1
    for record in sorted(records, key=lambda r: (r["config"]["kind"], r["label"], r["seed"])):
        payload, kind = record["result"], record["config"]["kind"]
        name = f"{_slug(kind + ' ' + record['task_label'] + ' ' + record['label'])}.png"
        if kind == "curvature" and runs_per_task[record["task_label"]] < PREMISE_MIN_RUNS:
            plot_curvature(
                payload["records"], out_dir / name, title=curvature_title(payload["config"])
            )
            rows = [
                "| epoch | top eigenvalues | trace ± SE | λmax / mean\\|λ\\| | λmin |",
                "| --- | --- | --- | --- | --- |",
            ]
            rows += [
                f"| {e['epoch']} | {', '.join(f'{v:.3g}' for v in e['top_eigenvalues'])} | "
                f"{e['trace']:.3g} ± {e['trace_std_error']:.2g} | {e['anisotropy']:.3g} | "
                f"{e['lambda_min']:.3g} |"
                for e in payload["records"]
            ]
            parts += [
                f"### Hessian spectrum over training: {record['task_label']}, "
                f"{record['label']} (seed {record['seed']})\n",
                "\n".join(rows),
                "",
                f"![curvature]({name})",
                "",
            ]
        elif kind == "momentum_tracing":
            runs = payload["runs"]
            plot_momentum_tracing(runs, out_dir / name, title=tracing_title(payload["config"]))
            rows = [
                "| run | BN-bias tracing events | other parameters | q95 \\|w\\| | test acc |",
                "| --- | --- | --- | --- | --- |",
            ]
            rows += [
                f"| {label} | {run['summary']['bn_bias_total']} | "
                f"{run['summary']['other_total']} | {run['summary']['quantile_final']:.3f} | "
                f"{run['final'].get('test_acc', math.nan):.3f} |"
                for label, run in runs.items()
            ]
            parts += [
                f"### Momentum tracing: {record['label']} (seed {record['seed']})\n",
                "\n".join(rows),
                "",
                f"![momentum tracing]({name})",
                "",
            ]
    return "\n".join(parts)
