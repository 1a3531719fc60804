"""The runner: one record per run, resume skips finished runs, a SIGKILLed suite completes on
re-run with every record intact and no finished run executed twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geoptim.bench import records, runner
from geoptim.bench.records import RunSpec

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import fake_task  # noqa: E402


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Serve the fake task; return the path of its execution log."""
    import geoptim.bench.tasks as tasks

    monkeypatch.setattr(tasks, "get_task", fake_task.get_task, raising=False)
    monkeypatch.setattr(tasks, "list_tasks", fake_task.list_tasks, raising=False)
    log = tmp_path / "executions.jsonl"
    monkeypatch.setenv("FAKE_TASK_LOG", str(log))
    return log


def executions(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def specs(n_seeds: int = 3) -> list[RunSpec]:
    return [
        RunSpec(
            task="fake",
            optimizer=opt,
            hparams={"lr": 1e-2},
            seed=seed,
            budget={"steps": 20, "eval_every": 5},
        )
        for opt in ("sgdm", "lpsgdm")
        for seed in range(n_seeds)
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_execute_writes_one_record_per_run_and_resumes(fake, tmp_path, workers):
    out = tmp_path / "out"
    todo = specs()
    summary = runner.execute(todo, out, workers=workers, quiet=True)
    assert (summary.total, summary.skipped, len(summary.ran), summary.failed) == (6, 0, 6, [])
    done = {r["run_id"]: r for r in records.iter_records(out)}
    assert set(done) == {s.run_id for s in todo}
    for s in todo:
        rec = done[s.run_id]
        assert rec["config"] == json.loads(json.dumps(s.config()))
        assert rec["seed"] == s.seed and rec["label"] == s.optimizer
        assert set(rec["versions"]) == {"python", "geoptim", *records.LIBRARIES}
        assert rec["suite"] == s.suite and rec["schema"] == records.SCHEMA_VERSION
        assert len(rec["provenance"]["source_hash"]) == 16
        records.check_schema(rec)
        assert rec["wall_time_s"] > 0 and rec["steps_per_s"] > 0
        assert rec["result"]["final"]["test_acc"] == rec["result"]["curves"]["test_acc"][-1]
    assert len(executions(fake)) == 6

    again = runner.execute(todo, out, workers=workers, quiet=True)
    assert (again.skipped, again.ran) == (6, [])
    assert len(executions(fake)) == 6


def test_corrupt_record_and_stale_temp_file_are_redone(fake, tmp_path):
    out = tmp_path / "out"
    todo = specs(1)
    runner.execute(todo, out, quiet=True)
    broken = records.record_path(out, todo[0].run_id)
    broken.write_text(broken.read_text()[:40])
    stale = records.records_dir(out) / ".x.123.tmp"
    stale.write_text("{")
    summary = runner.execute(todo, out, quiet=True)
    assert [o.spec.run_id for o in summary.ran] == [todo[0].run_id]
    assert records.read_record(broken) is not None
    assert not stale.exists()


def test_a_failing_run_writes_no_record_and_is_reported(fake, tmp_path):
    bad = RunSpec(
        task="fake", optimizer="sgdm", hparams={}, seed=0, budget={"steps": 5, "eval_every": 5}
    )
    summary = runner.execute([bad, *specs(1)], tmp_path, quiet=True)
    assert [o.spec for o in summary.failed] == [bad]
    assert "KeyError" in summary.failed[0].error
    assert not records.is_done(tmp_path, bad.run_id)
    assert len(list(records.iter_records(tmp_path))) == 2


def _bench_command(out: Path) -> list[str]:
    return [
        sys.executable,
        str(FIXTURES / "run_cli.py"),
        "bench",
        "--tasks",
        "fake",
        "--seeds",
        "3",
        "--workers",
        "2",
        "--quiet",
        "--no-report",
        "--out",
        str(out),
    ]


def test_sigkill_part_way_then_rerun_completes_without_redoing_runs(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "FAKE_TASK_DELAY": "0.05", "FAKE_TASK_LOG": str(tmp_path / "log1")}
    proc = subprocess.Popen(
        _bench_command(out),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    folder = records.records_dir(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and len(list(folder.glob("*.json"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)  # the whole suite: main process and workers
    proc.wait()
    proc.stderr.close()

    after_kill = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    assert 2 <= len(after_kill) < 12, "the kill must land part-way"
    for content in after_kill.values():
        json.loads(content)
    first = executions(tmp_path / "log1")
    assert len({(e["optimizer"], e["seed"]) for e in first}) == len(first)

    env["FAKE_TASK_LOG"] = str(tmp_path / "log2")
    done = subprocess.run(_bench_command(out), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    final = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    assert len(final) == 12  # 4 default optimizers x 3 seeds
    assert not list(folder.glob("*.tmp"))
    recs = [records.read_record(folder / name) for name in final]
    assert all(r is not None for r in recs)
    for name, content in after_kill.items():
        assert final[name] == content  # finished runs were not redone nor rewritten
    killed_done = {
        (r["config"]["optimizer"], r["seed"]) for r in recs if f"{r['run_id']}.json" in after_kill
    }
    second = [(e["optimizer"], e["seed"]) for e in executions(tmp_path / "log2")]
    assert len(second) == len(set(second)) == 12 - len(after_kill)
    assert not killed_done & set(second)


def test_an_edited_record_is_warned_about_and_rerun(fake, tmp_path, capsys):
    out = tmp_path / "out"
    todo = specs(1)
    runner.execute(todo, out, quiet=True)
    path = records.record_path(out, todo[0].run_id)
    data = json.loads(path.read_text())
    data["config"]["seed"] = 7
    path.write_text(json.dumps(data))
    capsys.readouterr()
    summary = runner.execute(todo, out, quiet=True)
    assert [o.spec for o in summary.ran] == [todo[0]] and summary.skipped == 1
    assert f"record {path.name} does not match its config" in capsys.readouterr().out
    assert records.read_record(path)["config"]["seed"] == 0
    assert len(executions(fake)) == 3


def test_another_versions_record_is_rerun_unless_accepted(fake, tmp_path, capsys):
    out = tmp_path / "out"
    todo = specs(1)
    runner.execute(todo, out, quiet=True)
    path = records.record_path(out, todo[1].run_id)
    data = json.loads(path.read_text())
    data["versions"]["geoptim"] = "0.0.1"
    path.write_text(json.dumps(data))
    assert runner.execute(todo, out, quiet=True, accept_other_versions=True).ran == []
    capsys.readouterr()
    summary = runner.execute(todo, out, quiet=True)
    assert [o.spec for o in summary.ran] == [todo[1]]
    assert "1 record(s) were written by another geoptim version" in capsys.readouterr().out


def test_report_picks_the_suite_and_leaves_other_versions_out(fake, tmp_path, capsys):
    from geoptim.cli import main

    out = tmp_path / "out"
    quick = [RunSpec(**{**s.to_dict(), "suite": "quick"}) for s in specs(2)]
    full = [RunSpec(**{**s.to_dict(), "suite": "full", "seed": s.seed + 5}) for s in specs(3)]
    runner.execute(quick, out, quiet=True)
    runner.execute(full, out, quiet=True)
    assert main(["report", str(out)]) == 0  # the suite last run: full
    assert "6 runs (suite: full)" in (out / "report.md").read_text()
    assert main(["report", str(out), "--suite", "quick"]) == 0
    assert "4 runs (suite: quick)" in (out / "report.md").read_text()

    path = records.record_path(out, quick[0].run_id)
    data = json.loads(path.read_text())
    data["versions"]["geoptim"] = "0.0.1"
    path.write_text(json.dumps(data))
    assert main(["report", str(out), "--suite", "quick"]) == 0
    text = (out / "report.md").read_text()
    assert "3 runs (suite: quick)" in text and "--accept-other-versions" in text
    assert main(["report", str(out), "--suite", "quick", "--accept-other-versions"]) == 0
    assert "4 runs (suite: quick)" in (out / "report.md").read_text()
    assert main(["report", str(out), "--suite", "standard"]) == 2
    assert "no records of suite 'standard'" in capsys.readouterr().err


def test_a_second_writer_on_a_locked_directory_stops_with_one_line(fake, tmp_path, capsys):
    from geoptim.cli import main

    out = tmp_path / "out"
    with runner.directory_lock(out):
        with pytest.raises(runner.DirectoryBusy, match=f"{out} is in use by geoptim bench"):
            runner.execute(specs(1), out, quiet=True)
        assert main(["bench", "--tasks", "fake", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geoptim: error: ") and "--wait" in err[0]
    assert executions(fake) == [] and not list(records.records_dir(out).glob("*.json"))


def test_writers_waiting_for_the_directory_run_nothing_twice_and_spare_live_temp_files(tmp_path):
    """Two benches with --wait queue behind a held lock; once it is released, one runs
    everything, the other waits for it and runs nothing; a live writer's temp file survives."""
    out = tmp_path / "out"
    env = {**os.environ, "FAKE_TASK_DELAY": "0.02", "FAKE_TASK_LOG": str(tmp_path / "log")}
    folder = records.records_dir(out)
    folder.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    here = records.temp_name("x").split("~")[1]
    in_flight = folder / f".inflight~{here}~{sleeper.pid}~00.tmp"
    in_flight.write_text("{")
    benches = []
    try:
        with runner.directory_lock(out):
            benches = [
                subprocess.Popen(
                    [*_bench_command(out), "--wait"],
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                for _ in range(2)
            ]
            for bench in benches:
                line = bench.stderr.readline()
                assert line.startswith("waiting for geoptim bench (pid"), line
        results = [bench.communicate(timeout=120) for bench in benches]
        assert [bench.returncode for bench in benches] == [0, 0], results
        summaries = sorted(stdout.splitlines()[-1].split(", in")[0] for stdout, _ in results)
        assert summaries == [
            "0 runs done, 12 already recorded, 0 failed",
            "12 runs done, 0 already recorded, 0 failed",
        ]
        assert in_flight.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for bench in benches:
            bench.kill()
    runs = [(e["optimizer"], e["seed"]) for e in executions(tmp_path / "log")]
    assert len(runs) == len(set(runs)) == 12
