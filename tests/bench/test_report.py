"""The report, built from hand-made fixture records: table numbers are the mean and sample std
computed independently here, the best mean is bold, figures and claims are written."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import pytest

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
GAPS = {"adamw": [200, 250, None], "lion": [100, 120, 110], "sepnorm": [60, 70, 80],
        "ortsepnorm": [20, 30, 25]}


def digits_records():
    out = []
    for label, finals in ACC.items():
        optimizer, variant = ("lpsgdm", {"p_max": 4}) if "p_max" in label else (label, {})
        for seed, final in enumerate(finals):
            acc = [0.1, final / 2, final * 0.9, final * 0.95, final]
            nll = [2.3, 1.0, 0.8, 0.6, NLL[label][seed]]
            out.append(record("digits", optimizer, seed, steps=STEPS, test_acc=acc,
                              train_loss=nll, variant=variant,
                              time_s=[0.0, 0.1, 0.2, 0.3, 0.4]))
    return out


def grokking_records():
    out = []
    for optimizer, gaps in GAPS.items():
        for seed, gap in enumerate(gaps):
            train_reach = 50
            extra = {"tau": 0.99, "train_reach_step": train_reach,
                     "test_reach_step": None if gap is None else train_reach + gap, "gap": gap}
            steps = list(range(0, 401, 50))
            out.append(record("grokking", optimizer, seed, steps=steps, extra=extra,
                              train_acc=[min(1.0, s / 50) for s in steps],
                              test_acc=[0.5] * len(steps), train_loss=[1.0] * len(steps)))
    return out


def quadratic_records():
    return [record("quadratic", opt, 0, steps=[0, 5, 10], train_loss=[5.0, 1.0, 0.01],
                   extra={"trajectory": [[1.0, 1.0], [0.5, -0.2], [0.01, 0.0]],
                          "steps_to_target": 9 if opt == "sgd" else None, "target_loss": 0.1,
                          "problem": "strong"})
            for opt in ("sgd", "signsgd")]


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


def test_grokking_gap_table_and_censoring(report):
    _, text = report
    rows = block(text, "### Grokking gap")
    assert cell(rows, "ortsepnorm", 4).startswith("**25 ± 5**")
    # adamw: 200, 250 and a lower bound 400 - 50 = 350
    assert cell(rows, "adamw", 4) == f"{expected([200, 250, 350], 1, 0)} (3/3, 1 ≥)"
    assert cell(rows, "adamw", 3) == f"{expected([250, 300], 1, 0)} (2/3)"


def test_figures_claims_and_determinism(report):
    out, text = report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"digits_curves.png", "digits_curves_p_max.png", "grokking_grokking.png",
            "quadratic_trajectories.png"} <= set(images)
    for name in images:
        assert (out / name).stat().st_size > 1000
    claims = json.loads((out / "claims.json").read_text())
    by_claim = {(c["claim"], c["task"]): c for c in claims}
    lp = by_claim[("LPSGDM beats SGD with momentum", "digits")]
    assert lp["verdict"] == "reproduced" and lp["seeds"] == "3 / 3"
    assert by_claim[("OrtSepNorm has the smallest grokking gap", "grokking")]["verdict"] == \
        "reproduced"
    assert "## Claims" in text and "Welch" in text
    assert "| LPSGDM beats SGD with momentum | LPSGD paper, tables 1-2 | digits |" in text
    assert build_report(out).read_text() == text


def test_quadratic_table(report):
    _, text = report
    rows = block(text, "### Steps to target loss")
    assert cell(rows, "sgd", 2) == "9 ± – (1/1)"
    assert cell(rows, "signsgd", 2) == "– ± – (0/1)" or cell(rows, "signsgd", 2).endswith("(0/1)")


def test_no_records_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no records"):
        build_report(tmp_path)
