"""``geoptim bench|report``: clear errors before any run, dry runs, bench then report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from geoptim.bench import records
from geoptim.cli import build_parser, main

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import fake_task


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    import geoptim.bench.tasks as tasks

    monkeypatch.setattr(tasks, "get_task", fake_task.get_task, raising=False)
    monkeypatch.setattr(tasks, "list_tasks", fake_task.list_tasks, raising=False)


def test_commands_are_registered():
    help_text = build_parser().format_help()
    for command in ("bench", "report", "tune"):
        assert command in help_text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "nosuch"], "unknown task 'nosuch'; known tasks: fake"),
        (["--tasks", "fake", "--optimizers", "adamx"], "unknown optimizer 'adamx'; known"),
        (["--tasks", "fake:delay"], "bad task option 'delay'"),
        (["--tasks", "fake:speed=2"], "task 'fake' has no option 'speed'; its options: delay"),
        (["--tasks", "fake:delay=soon"], "task 'fake' option delay must be a number, got 'soon'"),
        (["--tasks", "fake", "--preset-file", "missing.json"], "cannot read preset file"),
    ],
)
def test_bad_configuration_fails_before_any_run(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["bench", *argv, "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("geoptim: error: ") and message in line
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--seeds", "0"],
        ["--seeds", "three"],
        ["--workers", "-1"],
        ["--suite", "huge"],
    ],
)
def test_bad_numbers_and_choices_are_one_line_errors(tmp_path, capsys, argv):
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "positive integer" in line or "invalid choice" in line
    assert not list(tmp_path.iterdir())


def test_bad_preset_file_content(tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text('{"task": "fake"}')
    assert (
        main(["bench", "--tasks", "fake", "--preset-file", str(bad), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "lacks 'optimizer'" in capsys.readouterr().err


def test_dry_run_lists_the_runs(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--tasks",
                "fake",
                "--seeds",
                "2",
                "--optimizers",
                "sgdm,lion",
                "--dry-run",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.strip().endswith("4 runs")
    assert "fake lion seed=1" in out
    assert not (tmp_path / "o").exists()


def test_bench_then_report_rebuilds_from_records(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "bench",
        "--tasks",
        "fake",
        "--optimizers",
        "sgdm",
        "lpsgdm",
        "--quiet",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    text = (out / "report.md").read_text()
    assert "## Task: fake" in text and "| LPSGDM beats SGD with momentum |" in text
    assert len(list(records.iter_records(out))) == 6
    log = capsys.readouterr().out
    assert "[6/6] fake" in log and "6 runs done, 0 already recorded" in log

    assert main(argv) == 0  # everything recorded: nothing runs
    assert "0 runs done, 6 already recorded" in capsys.readouterr().out

    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == text


def test_report_without_records(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err
