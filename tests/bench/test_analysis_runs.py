"""The full suite's analysis experiments run as records and appear in the report."""

import json

from geoptim.bench import report, runner, suites
from geoptim.bench.records import RunSpec, iter_records


def test_full_suite_has_curvature_and_momentum_tracing_runs():
    kinds = {(exp.kind, exp.optimizers) for exp in suites.SUITES["full"]}
    assert ("curvature", ("sgdm", "lpsgdm")) in kinds
    assert ("momentum_tracing", ("lion", "sepnorm")) in kinds


def test_analysis_runs_write_records_and_report_sections(tmp_path):
    curvature = RunSpec(
        task="digits",
        task_overrides={"model": "resnet", "width": 8},
        optimizer="sgdm",
        hparams={"lr": 0.05},
        seed=0,
        kind="curvature",
        budget={
            "epochs": 1,
            "batches_per_epoch": 4,
            "at": [0, 1],
            "k": 2,
            "hessian_samples": 32,
            "slq_probes": 1,
            "slq_steps": 8,
            "trace_samples": 12,
        },
    )
    tracing = RunSpec(
        task="digits",
        task_overrides={"model": "resnet"},
        optimizer="lion",
        hparams={"lr": 1e-2, "weight_decay": 0.2},
        seed=0,
        kind="momentum_tracing",
        budget={"epochs": 1},
    )
    summary = runner.execute([curvature, tracing], tmp_path, workers=1, quiet=True)
    assert not summary.failed, [o.error for o in summary.failed]
    records = {r["config"]["kind"]: r for r in iter_records(tmp_path)}
    epochs = [e["epoch"] for e in records["curvature"]["result"]["records"]]
    assert epochs == [0, 1]
    top = records["curvature"]["result"]["records"][1]["top_eigenvalues"]
    assert len(top) == 2 and top[0] >= top[1]
    runs = records["momentum_tracing"]["result"]["runs"]
    assert set(runs) == {"lion / relu", "lion / leaky_relu"}

    text = report.build_report(tmp_path).read_text()
    assert "## Curvature and training dynamics" in text
    assert f"| 1 | {top[0]:.3g}, {top[1]:.3g} |" in text
    for label, run in runs.items():
        assert f"| {label} | {run['summary']['bn_bias_total']} |" in text
    pngs = sorted(p.name for p in tmp_path.glob("curvature*.png"))
    pngs += sorted(p.name for p in tmp_path.glob("momentum*.png"))
    assert len(pngs) == 2, pngs
    json.loads((tmp_path / "claims.json").read_text())  # the claims file is still written
