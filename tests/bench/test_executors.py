"""Claim files (without Ray: two processes racing for the same runs run each once), a local
worker killed mid-run, and the Ray executor against a local Ray (skipped without Ray): the same
records as the local pool, a killed worker's run redone once, two drivers running each run once."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from geoptim.bench import claiming, records, runner
from geoptim.bench.executors import LocalExecutor, RayExecutor
from geoptim.bench.records import RunSpec

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import fake_task  # noqa: E402
import ray_driver  # noqa: E402

TIMING = ("started_at", "wall_time_s", "steps_per_s")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    import geoptim.bench.tasks as tasks

    monkeypatch.setattr(tasks, "get_task", fake_task.get_task, raising=False)
    monkeypatch.setattr(tasks, "list_tasks", fake_task.list_tasks, raising=False)
    monkeypatch.setattr(runner, "BUSY_POLL_S", 0.05)
    log = tmp_path / "executions.jsonl"
    monkeypatch.setenv("FAKE_TASK_LOG", str(log))
    return log


def executions(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    return [(e["optimizer"], e["seed"]) for e in map(json.loads, log.read_text().splitlines())]


def specs(delay: float = 0.0, seeds: int = 3) -> list[RunSpec]:
    return [
        RunSpec(
            task="fake",
            task_overrides={"delay": delay} if delay else {},
            optimizer=opt,
            hparams={"lr": 1e-2},
            seed=seed,
            budget={"steps": 20, "eval_every": 5},
        )
        for opt in ("sgdm", "lpsgdm")
        for seed in range(seeds)
    ]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_claim(out: Path, run_id: str, host: str, pid: int, age_s: float = 0.0) -> Path:
    path = claiming.claim_path(out, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "run_id": run_id,
                "host": host,
                "pid": pid,
                "started_at": time.time() - age_s,
                "token": "old",
            }
        )
    )
    os.utime(path, (time.time() - age_s,) * 2)
    return path


# --- the claim protocol ------------------------------------------------------------------------


def test_a_claim_is_exclusive_until_released(tmp_path):
    claim = claiming.try_claim(tmp_path, "r1")
    assert claim is not None and claim.pid == os.getpid()
    assert claiming.read_claim(claiming.claim_path(tmp_path, "r1")) == claim
    assert claiming.try_claim(tmp_path, "r1") is None  # held by a live process
    claiming.release(tmp_path, claim)
    assert claiming.try_claim(tmp_path, "r1") is not None


@pytest.mark.parametrize(
    "host, pid, age_s, stale",
    [
        ("here", "dead", 0.0, True),  # its worker is gone from this host
        ("here", "live", 0.0, False),
        ("elsewhere", "dead", 0.0, False),  # another host: only the heartbeat tells
        ("elsewhere", "dead", claiming.CLAIM_TIMEOUT_S + 5, True),
    ],
)
def test_a_stale_claim_is_taken_over_once(tmp_path, host, pid, age_s, stale):
    import socket

    write_claim(
        tmp_path,
        "r1",
        socket.gethostname() if host == "here" else host,
        dead_pid() if pid == "dead" else os.getppid(),
        age_s,
    )
    first = claiming.try_claim(tmp_path, "r1")
    assert (first is not None) == stale
    assert claiming.try_claim(tmp_path, "r1") is None  # the new claim is live
    if stale:
        assert claiming.read_claim(claiming.claim_path(tmp_path, "r1")) == first


def test_only_the_breaker_takes_over(tmp_path):
    path = write_claim(tmp_path, "r1", "elsewhere", 1, claiming.CLAIM_TIMEOUT_S + 5)
    path.with_name(f"{path.name}.break-old").touch()  # another driver is taking it over
    assert claiming.try_claim(tmp_path, "r1") is None


def test_break_claim_needs_the_token(tmp_path):
    claim = claiming.try_claim(tmp_path, "r1", token="t1")
    claiming.break_claim(tmp_path, "r1", "other")
    assert claiming.read_claim(claiming.claim_path(tmp_path, "r1")) == claim
    claiming.break_claim(tmp_path, "r1", "t1")
    assert not claiming.claim_path(tmp_path, "r1").exists()


def test_a_finished_run_is_not_rerun_even_when_its_claim_is_stale(fake, tmp_path):
    (spec,) = specs(seeds=1)[:1]
    runner.execute([spec], tmp_path, quiet=True)
    import socket

    write_claim(tmp_path, spec.run_id, socket.gethostname(), dead_pid())
    assert runner.run_one(spec, str(tmp_path)).status == runner.RECORDED
    assert executions(fake) == [("sgdm", 0)]


def test_the_heartbeat_keeps_a_claim_young(tmp_path):
    claim = claiming.try_claim(tmp_path, "r1")
    path = claiming.claim_path(tmp_path, "r1")
    os.utime(path, (0, 0))
    with claiming.heartbeat(tmp_path, claim, every_s=0.01):
        deadline = time.monotonic() + 10
        while path.stat().st_mtime == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert time.time() - path.stat().st_mtime < 10


def test_a_run_held_by_a_live_worker_elsewhere_is_waited_for_not_run(fake, tmp_path):
    import socket

    held, free = specs(seeds=1)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_claim(tmp_path, held.run_id, socket.gethostname(), sleeper.pid)
        summaries: list[runner.Summary] = []
        driver = threading.Thread(
            target=lambda: summaries.append(runner.execute([held, free], tmp_path, quiet=True))
        )
        driver.start()
        deadline = time.monotonic() + 60
        while not records.is_done(tmp_path, free.run_id) and time.monotonic() < deadline:
            time.sleep(0.01)
        result = {"curves": {}, "final": {}, "steps": 0, "extra": {}}
        records.write_record(
            tmp_path,
            records.Record.for_run(
                held, result, data_hash=None, started_at="", wall_time_s=1.0, torch_threads=1
            ),
        )
        claiming.claim_path(tmp_path, held.run_id).unlink()  # the other worker is done
        driver.join(timeout=60)
    finally:
        sleeper.kill()
        sleeper.wait()
    (summary,) = summaries
    assert [o.spec for o in summary.ran] == [free] and summary.skipped == 1
    assert executions(fake) == [(free.optimizer, free.seed)]


def _race(out: str, done: str) -> None:
    summary = runner.execute(specs(delay=0.02), out, quiet=True, lock=False)
    Path(done).write_text(json.dumps([len(summary.ran), summary.skipped, len(summary.failed)]))


def test_two_processes_racing_for_the_same_runs_run_each_once(fake, tmp_path):
    fork = multiprocessing.get_context("fork")
    racers = [
        fork.Process(target=_race, args=(str(tmp_path / "out"), str(tmp_path / f"s{k}")))
        for k in range(2)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=120)
        assert racer.exitcode == 0
    ran = executions(fake)
    assert sorted(ran) == sorted((s.optimizer, s.seed) for s in specs())  # each exactly once
    counts = [json.loads((tmp_path / f"s{k}").read_text()) for k in range(2)]
    assert sum(c[0] for c in counts) == 6 and all(c[0] + c[1] == 6 and not c[2] for c in counts)
    assert not list((tmp_path / "out" / claiming.CLAIMS_SUBDIR).glob("*.claim"))


# --- a worker killed mid-run -------------------------------------------------------------------


def _kill_first_worker(log: Path, killed: list[tuple[str, int]]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().strip():
            entry = json.loads(log.read_text().splitlines()[0])
            os.kill(entry["pid"], signal.SIGKILL)
            killed.append((entry["optimizer"], entry["seed"]))
            return
        time.sleep(0.01)


def _run_with_a_kill(log: Path, todo: list[RunSpec], out: Path, executor) -> runner.Summary:
    killed: list[tuple[str, int]] = []
    killer = threading.Thread(target=_kill_first_worker, args=(log, killed))
    killer.start()
    summary = runner.execute(todo, out, quiet=True, executor=executor)
    killer.join()
    assert killed, "the kill must land"
    assert summary.failed == [] and len(summary.ran) == len(todo)
    assert {r["run_id"] for r in records.iter_records(out)} == {s.run_id for s in todo}
    ran = executions(log)
    assert ran.count(killed[0]) == 2  # killed once, redone once
    return summary


def test_a_local_worker_killed_mid_run_has_its_run_redone_once(fake, tmp_path):
    todo = specs(delay=0.1)
    pool = LocalExecutor(workers=2)
    try:
        _run_with_a_kill(fake, todo, tmp_path / "out", pool)
    finally:
        pool.close()
    ran = executions(fake)
    assert set(ran) == {(s.optimizer, s.seed) for s in todo}
    assert all(ran.count(run) <= 2 for run in ran)  # runs in flight in the broken pool: again


# --- Ray ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--executor", "ray"], "--executor ray needs Ray: install geoptim[cluster]"),
        (["--address", "head:6379"], "--address needs --executor ray"),
    ],
)
def test_executor_arguments_fail_with_one_line(fake, tmp_path, capsys, monkeypatch, argv, message):
    from geoptim.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    for command in (
        ["bench", "--tasks", "fake"],
        ["tune", "--task", "fake", "--optimizer", "sgdm"],
    ):
        assert main([*command, *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"geoptim: error: {message}"]
    assert executions(fake) == []


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    log = tmp_path_factory.mktemp("ray") / "executions.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FAKE_TASK_LOG", str(log))
        ray.init(
            num_cpus=2,
            runtime_env=ray_driver.runtime_env(),
            log_to_driver=False,
            include_dashboard=False,
        )
        try:
            yield log
        finally:
            ray.shutdown()


@pytest.fixture
def ray_log(ray_cluster, fake, monkeypatch):
    ray_cluster.write_text("")
    monkeypatch.setenv("FAKE_TASK_LOG", str(ray_cluster))
    return ray_cluster


def without_timing(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in TIMING}


@pytest.mark.slow
def test_ray_gives_the_same_records_as_the_local_pool(ray_log, tmp_path):
    from geoptim.cli import main

    argv = [
        "bench",
        "--tasks",
        "fake",
        "--optimizers",
        "sgdm",
        "lpsgdm",
        "--seeds",
        "2",
        "--quiet",
        "--no-report",
    ]
    assert main([*argv, "--workers", "2", "--out", str(tmp_path / "local")]) == 0
    assert main([*argv, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    local = {r["run_id"]: without_timing(r) for r in records.iter_records(tmp_path / "local")}
    remote = {r["run_id"]: without_timing(r) for r in records.iter_records(tmp_path / "ray")}
    assert len(local) == 4 and local == remote
    pids = {json.loads(line)["pid"] for line in ray_log.read_text().splitlines()}
    assert os.getpid() not in pids  # the Ray runs ran in Ray workers


@pytest.mark.slow
def test_ray_worker_killed_mid_run_has_its_run_redone_once(ray_log, tmp_path):
    todo = specs(delay=0.2, seeds=2)
    _run_with_a_kill(ray_log, todo, tmp_path / "out", RayExecutor())
    ran = executions(ray_log)
    assert len(ran) == len(todo) + 1  # only the killed run ran twice


@pytest.mark.slow
def test_two_ray_drivers_on_one_directory_run_each_run_once(ray_log, tmp_path):
    import ray

    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(runner.__file__).parents[2])}
    drivers = [
        subprocess.Popen(
            [sys.executable, str(FIXTURES / "ray_driver.py"), address, str(out)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for driver in drivers:
        _, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, err
    todo = ray_driver.race_specs()
    assert sorted(executions(ray_log)) == sorted((s.optimizer, s.seed) for s in todo)
    assert {r["run_id"] for r in records.iter_records(out)} == {s.run_id for s in todo}
