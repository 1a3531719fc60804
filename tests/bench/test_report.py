"""The report, built from hand-made fixture records: table numbers are the mean and sample std
computed independently here, the best mean is bold, figures (forest plot, gap against lr·wd)
and claims (effect, interval, MDE, verdict) are written."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from geoptim.bench.claims import VERDICTS
from geoptim.bench.report import build_report

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_records import record, write_all

STEPS = [0, 10, 20, 30, 40]
ACC = {  # final test accuracies per seed
    "sgdm": [0.80, 0.82, 0.81],
    "lpsgdm": [0.90, 0.87, 0.93],
    "lpsgdm(p_max=4)": [0.85, 0.86, 0.84],
}
NLL = {"sgdm": [0.30, 0.28, 0.35], "lpsgdm": [0.40, 0.42, 0.39], "lpsgdm(p_max=4)": [0.5, 0.5, 0.6]}
AGR_CHANGE = [0.002, 0.004, 0.009]
GAPS = {
    "adamw": [200, 250, None],
    "lion": [100, 120, 110],
    "sepnorm": [60, 70, 80],
    "ortsepnorm": [20, 30, 25],
}


def digits_records():
    out = [
        record(
            "digits",
            "adamw_agr",
            seed,
            steps=STEPS,
            test_acc=[0.1, 0.2, 0.3, 0.4, 0.5],
            extra={"agr_relative_change": change},
        )
        for seed, change in enumerate(AGR_CHANGE)
    ]
    for label, finals in ACC.items():
        optimizer, variant = ("lpsgdm", {"p_max": 4}) if "p_max" in label else (label, {})
        for seed, final in enumerate(finals):
            acc = [0.1, final / 2, final * 0.9, final * 0.95, final]
            nll = [2.3, 1.0, 0.8, 0.6, NLL[label][seed]]
            out.append(
                record(
                    "digits",
                    optimizer,
                    seed,
                    steps=STEPS,
                    test_acc=acc,
                    train_loss=nll,
                    test_loss=[v + 0.1 for v in nll],
                    variant=variant,
                    time_s=[0.0, 0.1, 0.2, 0.3, 0.4],
                )
            )
    return out


def grokking_records():
    out = []
    for optimizer, gaps in GAPS.items():
        for seed, gap in enumerate(gaps):
            out.append(_grok(optimizer, seed, gap))
    # a weight-decay sweep at two matched lr·wd values; lion never fits at the larger one
    for wd in (1.0, 2.0):
        for seed in range(3):
            out.append(_grok("adamw", seed, 100 + 10 * seed, {"weight_decay": wd}))
            out.append(
                _grok("lion", seed, None if wd == 2.0 else 60, {"weight_decay": wd}, fits=wd == 1.0)
            )
    return out


def _grok(optimizer, seed, gap, variant=None, fits=True):
    train_reach = 50 if fits else None
    test_reach = None if gap is None or not fits else train_reach + gap
    extra = {
        "tau": 0.99,
        "train_reach_step": train_reach,
        "test_reach_step": test_reach,
        "gap": None if test_reach is None else gap,
    }
    steps = list(range(0, 401, 50))
    return record(
        "grokking",
        optimizer,
        seed,
        steps=steps,
        extra=extra,
        variant=variant,
        hparams={"weight_decay": 0.5, **(variant or {})},
        train_acc=[min(1.0, s / 50) for s in steps],
        test_acc=[0.5] * len(steps),
        train_loss=[1.0] * len(steps),
    )


def quadratic_records():
    return [
        record(
            "quadratic",
            opt,
            0,
            steps=[0, 5, 10],
            train_loss=[5.0, 1.0, 0.01],
            extra={
                "trajectory": [[1.0, 1.0], [0.5, -0.2], [0.01, 0.0]],
                "steps_to_target": 9 if opt == "sgd" else None,
                "target_loss": 0.1,
                "problem": "strong",
            },
        )
        for opt in ("sgd", "signsgd")
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_all(out, digits_records() + grokking_records() + quadratic_records())
    path = build_report(out)
    return out, path.read_text()


def block(text: str, heading: str) -> list[str]:
    """The table rows after the first ``heading``."""
    rest = text.split(heading, 1)[1]
    return [line for line in rest.split("\n#", 1)[0].splitlines() if line.startswith("| ")]


def cell(rows: list[str], label: str, column: int) -> str:
    row = next(r for r in rows if r.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")][column]


def expected(values, scale, digits):
    mean, std = statistics.mean(values) * scale, statistics.stdev(values) * scale
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def test_accuracy_and_nll_tables_hold_mean_and_std_with_best_in_bold(report):
    _, text = report
    acc = block(text, "### Test accuracy (%)")
    assert acc[0] == "| optimizer | n | step 10 | step 20 | step 40 |"
    for label, finals in ACC.items():
        value = cell(acc, label, 4).strip("*")
        assert value == expected(finals, 100, 2)
        assert cell(acc, label, 1) == "3"
    assert cell(acc, "lpsgdm", 4).startswith("**")
    assert not cell(acc, "sgdm", 4).startswith("**")
    mid = [f * 0.9 for f in ACC["sgdm"]]
    assert cell(acc, "sgdm", 3).strip("*") == expected(mid, 100, 2)

    nll = block(text, "### Train NLL")
    for label, finals in NLL.items():
        assert cell(nll, label, 4).strip("*") == expected(finals, 1, 4)
    assert cell(nll, "sgdm", 4).startswith("**")
    assert not cell(nll, "lpsgdm", 4).startswith("**")
    assert cell(nll, "sgdm", 2) == cell(nll, "lpsgdm", 2) == "**1.0000 ± 0.0000**"  # a tie


def test_time_to_target(report):
    _, text = report
    best = statistics.mean(ACC["lpsgdm"])
    target = int(0.95 * best * 100) / 100
    assert f"### Time to {target:.0%} test accuracy" in text
    rows = block(text, "### Time to")
    assert target == 0.85
    # lpsgdm seeds reach 0.85 at steps 30 (0.855), 40 (0.87), 30 (0.8835)
    assert cell(rows, "lpsgdm", 1) == "3/3"
    assert cell(rows, "lpsgdm", 2) == expected([30, 40, 30], 1, 0)
    assert cell(rows, "lpsgdm", 3) == expected([0.3, 0.4, 0.3], 1, 2)
    assert cell(rows, "lpsgdm(p_max=4)", 1) == "2/3"
    assert cell(rows, "sgdm", 1) == "0/3"


def test_end_of_budget_summary_has_test_nll_and_curve_area(report):
    _, text = report
    rows = block(text, "### End of the budget")
    assert cell(rows, "sgdm", 2) == expected(ACC["sgdm"], 100, 2)
    assert cell(rows, "sgdm", 3) == expected([v + 0.1 for v in NLL["sgdm"]], 1, 4)
    # mean accuracy over the run: trapezoid over the 5 equally spaced checkpoints / 40 steps
    area = [(0.1 / 2 + f / 2 + 0.9 * f + 0.95 * f + f / 2) / 4 for f in ACC["lpsgdm"]]
    assert cell(rows, "lpsgdm", 4) == expected(area, 100, 2)


def test_agr_relative_change_is_reported(report):
    _, text = report
    rows = block(text, "### How much AGR changes the update")
    assert cell(rows, "adamw_agr", 2) == expected([c * 100 for c in AGR_CHANGE], 1, 3)
    assert cell(rows, "adamw_agr", 3) == "0.400%"


def test_grokking_table_counts_every_run(report):
    _, text = report
    rows = block(text, "### Grokking")
    assert rows[0] == (
        "| optimizer | lr·wd | n | fit | generalised | steps to test ≥ τ | gap (steps) |"
    )
    # adamw: gaps 200, 250, one never generalised -> gap censored at 400 - 50 = 350
    assert cell(rows, "adamw", 6) == f"{expected([200, 250, 350], 1, 0)}, 1 ≥"
    assert cell(rows, "adamw", 4) == "2/3"
    assert cell(rows, "adamw", 5) == "300"  # KM median of 250, 300, >400
    # lion at wd 2 never fits: counted, 0/3 fit, censored at the budget in the test
    never = next(r for r in rows if r.startswith("| lion(weight_decay=2.0) |"))
    assert "| 0/3 | 0/3 | > 400 |" in never


def test_claims_table_forest_and_gap_plot(report):
    out, text = report
    claims = {(c["claim"], c["task"]): c for c in json.loads((out / "claims.json").read_text())}
    lp = claims[("LPSGDM beats SGD with momentum", "digits")]
    diffs = [100 * (a - b) for a, b in zip(ACC["lpsgdm"], ACC["sgdm"], strict=True)]
    assert lp["effect"] == pytest.approx(statistics.mean(diffs))
    assert lp["test"] == "paired t" and lp["n"] == "3 pairs"
    for key in ("low", "high", "mde", "p", "p_holm", "verdict", "n_for_paper"):
        assert lp[key] is not None
    assert set(c["verdict"] for c in claims.values()) <= set(VERDICTS)
    matched = [c for (name, _), c in claims.items() if "at lr·wd" in name]
    # the presets (both at lr·wd 0.005) make the presets' row, not a second one
    assert {c["claim"] for c in matched} == {
        f"Grokking: Lion generalises before AdamW at lr·wd = {x}" for x in (0.01, 0.02)
    }
    assert ("Grokking: SepNorm generalises before Lion", "grokking") in claims
    assert "![forest plot of every claim](claims_forest.png)" in text
    assert "grokking_gap_vs_lr_wd.png" in text
    assert "**Does the cosine p schedule help beyond its implicit step size?**" in text


def test_quadratic_table(report):
    _, text = report
    rows = block(text, "### Steps to target loss")
    assert cell(rows, "sgd", 2) == "9 ± – (1/1)"
    assert cell(rows, "signsgd", 2) == "– ± – (0/1)" or cell(rows, "signsgd", 2).endswith("(0/1)")


def test_no_records_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no records"):
        build_report(tmp_path)


def test_forest_plot_draws_unbounded_intervals(tmp_path):
    from geoptim.bench import plots
    from geoptim.bench.claims import GENERALISATION, ClaimRow

    row = ClaimRow(
        "c",
        "s",
        "grokking",
        GENERALISATION,
        "a",
        "b",
        "m",
        "log-rank",
        "4 / 4",
        0.0,
        -math.inf,
        math.inf,
        math.inf,
        0.69,
        0.22,
        None,
        1.0,
        1.0,
        1.0,
        "underpowered",
    )
    assert plots.forest([row], tmp_path / "f.png", "t")
    assert (tmp_path / "f.png").stat().st_size > 1000
    nan = ClaimRow(**{**row.to_dict(), "effect": math.nan})
    assert not plots.forest([nan], tmp_path / "g.png", "t")


def test_bits_per_char_and_distance_tables_with_floors(tmp_path):
    recs = []
    for seed, (bpc, swd) in enumerate([(2.5, 0.020), (2.7, 0.030)]):
        for task, metric, value, extra in (
            ("charlm", "test_bpc", bpc, {}),
            ("ddpm", "test_swd", swd, {"floor_test_swd": 0.0123}),
        ):
            rec = record(task, "adamw", seed, steps=[0, 10], train_loss=[3.0, 1.0], extra=extra)
            rec["result"]["curves"][metric] = [9.0, value]
            rec["result"]["final"][metric] = value
            recs.append(rec)
    write_all(tmp_path, recs)
    text = build_report(tmp_path).read_text(encoding="utf-8")
    assert cell(block(text, "### Test bits per character"), "adamw", -1) == "**2.600 ± 0.141**"
    assert cell(block(text, "### Test sliced Wasserstein"), "adamw", -1) == "**0.0250 ± 0.0071**"
    assert "Floor (the training data itself against the test data): 0.0123." in text
    assert "charlm_curves.png" in text and (tmp_path / "ddpm_curves.png").exists()
