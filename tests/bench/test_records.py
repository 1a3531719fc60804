"""Run ids, atomic record writes, and what counts as a finished run."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from geoptim.bench import records
from geoptim.bench.records import RunSpec


def spec(**changes):
    fields = dict(
        task="digits",
        optimizer="lpsgdm",
        hparams={"lr": 1e-3, "p_max": 6},
        seed=0,
        budget={"epochs": 5},
    )
    fields.update(changes)
    return RunSpec(**fields)


def test_run_id_is_stable_and_ignores_key_order_and_bookkeeping():
    a = spec(hparams={"lr": 1e-3, "p_max": 6})
    b = spec(hparams={"p_max": 6, "lr": 1e-3}, suite="full", variant={"p_max": 6}, preset="tuned")
    assert a.run_id == b.run_id
    assert len(a.run_id) == 16
    assert a.run_id == records.config_hash(json.loads(json.dumps(a.config())))


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"optimizer": "sgdm"},
        {"hparams": {"lr": 2e-3, "p_max": 6}},
        {"budget": {"epochs": 6}},
        {"task_overrides": {"model": "vgg"}},
        {"task": "mnist1d"},
    ],
)
def test_run_id_changes_with_the_config(change):
    assert spec(**change).run_id != spec().run_id


def test_labels():
    variant = spec(task_overrides={"model": "vgg", "width": 8})
    assert variant.task_label == "digits[model=vgg,width=8]"
    assert spec(variant={"p_max": 4}).label == "lpsgdm(p_max=4)"
    assert spec(preset="tuned").label == "lpsgdm [tuned]"


def full_record(s: RunSpec, result: dict | None = None) -> records.Record:
    result = result or {"curves": {"step": [0, 5]}, "final": {}, "steps": 5, "extra": {}}
    return records.Record.for_run(
        s, result, data_hash="d1", started_at="now", wall_time_s=2.0, torch_threads=1
    )


def test_write_and_read_roundtrip_with_non_finite_values(tmp_path):
    s = spec()
    result = {
        "curves": {"step": [0]},
        "final": {"loss": math.nan, "acc": (0.5, math.inf)},
        "steps": 10,
        "extra": {},
    }
    path = records.write_record(tmp_path, full_record(s, result))
    assert path == records.record_path(tmp_path, s.run_id)
    back = records.read_record(path)
    assert back["result"]["final"] == {"loss": None, "acc": [0.5, None]}
    assert back["steps_per_s"] == 5.0 and back["provenance"]["data_hash"] == "d1"
    assert records.is_done(tmp_path, s.run_id)
    assert [r["run_id"] for r in records.iter_records(tmp_path)] == [s.run_id]


def test_failed_write_leaves_neither_record_nor_temp_file(tmp_path, monkeypatch):
    s = spec()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(records.os, "replace", broken_replace)
    with pytest.raises(OSError):
        records.write_record(tmp_path, {"run_id": s.run_id, "config": {}, "result": {}})
    assert list(records.records_dir(tmp_path).iterdir()) == []


def test_write_replaces_atomically_never_exposing_partial_json(tmp_path, monkeypatch):
    """While the temp file is written, the final path must not exist (or hold the old record)."""
    s = spec()
    final = records.record_path(tmp_path, s.run_id)
    seen = []
    real_replace = os.replace

    def checking_replace(src, dst):
        seen.append((final.exists(), json.loads(Path(src).read_text())["run_id"]))
        real_replace(src, dst)

    monkeypatch.setattr(records.os, "replace", checking_replace)
    records.write_record(tmp_path, {"run_id": s.run_id, "config": {}, "result": {}})
    assert seen == [(False, s.run_id)]


@pytest.mark.parametrize(
    "content",
    [
        "",
        '{"run_id": "',
        "[]",
        '{"run_id": "other", "config": {}, "result": {}}',
        '{"run_id": "RID", "config": {}}',
    ],
)
def test_partial_or_foreign_files_are_not_records(tmp_path, content):
    folder = records.records_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "RID.json").write_text(content)
    assert records.read_record(folder / "RID.json") is None
    assert not records.is_done(tmp_path, "RID")
    assert list(records.iter_records(tmp_path)) == []


def test_clean_temp_files(tmp_path):
    folder = records.records_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / ".abc.x1.tmp").write_text('{"run_id": "ab')
    (folder / "keep.json").write_text("{}")
    assert records.clean_temp_files(tmp_path) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["keep.json"]


# --- records checked when read ----------------------------------------------------------------


def test_provenance_names_the_source_and_the_libraries():
    v = records.versions()
    assert set(v) == {"python", "geoptim", "torch", "numpy", "scikit-learn", "scipy", "mnist1d"}
    import numpy

    assert v["numpy"] == numpy.__version__
    p = records.provenance("abc")
    assert p.data_hash == "abc" and len(p.source_hash) == 16
    assert p.git_commit is None or len(p.git_commit) == 40


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.pop("provenance"), "lacks 'provenance'"),
        (lambda d: d.update(seed="0"), "record.seed has type str"),
        (lambda d: d.update(seed=True), "record.seed has type bool"),
        (lambda d: d["result"].pop("curves"), "result lacks 'curves'"),
        (lambda d: d["provenance"].update(host=3), "provenance.host has type int"),
    ],
)
def test_schema_check_names_the_bad_field(damage, message):
    data = full_record(spec()).to_dict()
    records.check_schema(data)
    damage(data)
    with pytest.raises(records.SchemaError, match=message):
        records.check_schema(data)


def test_a_record_whose_config_was_edited_is_not_trusted(tmp_path):
    s = spec()
    path = records.write_record(tmp_path, full_record(s))
    data = json.loads(path.read_text())
    data["config"]["hparams"]["lr"] = 0.5  # a better-looking learning rate, same file name
    path.write_text(json.dumps(data))
    assert records.inspect_record(path)[1] == records.TAMPERED
    assert records.read_record(path, accept_other_versions=True) is None
    assert not records.is_done(tmp_path, s.run_id)
    selection = records.select_records(tmp_path)
    assert selection.records == [] and selection.excluded[records.TAMPERED] == [path.name]
    assert "does not match its config" in selection.notes()[0]


@pytest.mark.parametrize(
    "change",
    [
        {"schema": 1},
        {"versions": {"geoptim": "0.0.1"}},
    ],
)
def test_other_versions_are_left_out_unless_accepted(tmp_path, change):
    s = spec()
    data = full_record(s).to_dict()
    data.update(change)
    path = records.write_record(tmp_path, data)
    assert records.inspect_record(path)[1] == records.OTHER_VERSION
    assert not records.is_done(tmp_path, s.run_id)
    assert records.is_done(tmp_path, s.run_id, accept_other_versions=True)
    left_out = records.select_records(tmp_path)
    assert left_out.records == [] and left_out.excluded[records.OTHER_VERSION] == [path.name]
    assert "--accept-other-versions" in left_out.notes()[0]
    kept = records.select_records(tmp_path, accept_other_versions=True)
    assert [r["run_id"] for r in kept.records] == [s.run_id]


def _suite_records(tmp_path):
    quick = [spec(seed=k, suite="quick") for k in range(2)]
    standard = [spec(seed=k, suite="standard") for k in range(2, 5)]
    for s in quick + standard:
        records.write_record(tmp_path, full_record(s))
    return quick, standard


def test_a_mixed_directory_without_plans_needs_a_suite(tmp_path):
    _suite_records(tmp_path)
    with pytest.raises(records.SelectionError, match=r"several suites.*--suite NAME"):
        records.select_records(tmp_path)
    chosen = records.select_records(tmp_path, suite="standard")
    assert sorted(r["seed"] for r in chosen.records) == [2, 3, 4]


def test_plans_choose_the_last_suite_and_share_runs(tmp_path):
    quick, standard = _suite_records(tmp_path)
    records.add_to_plan(tmp_path, "standard", [s.run_id for s in standard])
    records.add_to_plan(tmp_path, "quick", [s.run_id for s in quick])
    records.add_to_plan(tmp_path, "quick", [standard[0].run_id])  # a run both suites plan
    last = records.select_records(tmp_path)
    assert last.suite == "quick" and sorted(r["seed"] for r in last.records) == [0, 1, 2]
    other = records.select_records(tmp_path, suite="standard")
    assert sorted(r["seed"] for r in other.records) == [2, 3, 4]
    assert records.select_records(tmp_path, suite="full").records == []


# --- temporary files: only dead writers' ------------------------------------------------------


def test_temp_files_are_named_by_their_writer():
    name = records.temp_name("abc")
    stem, host, pid, token = name[1:-4].split("~")
    assert (stem, int(pid), len(token)) == ("abc", os.getpid(), 8) and host


def test_cleanup_removes_only_dead_writers_temp_files(tmp_path):
    import subprocess
    import sys

    folder = records.records_dir(tmp_path)
    folder.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        here = records.temp_name("x").split("~")[1]
        files = {
            "live": folder / f".a~{here}~{live.pid}~00.tmp",
            "dead": folder / f".b~{here}~{dead.pid}~00.tmp",
            "other_host_young": folder / f".c~elsewhere~{dead.pid}~00.tmp",
            "other_host_old": folder / f".d~elsewhere~{dead.pid}~00.tmp",
            "live_but_ancient": folder / f".e~{here}~{live.pid}~00.tmp",
            "legacy": folder / ".f.123.tmp",
        }
        for path in files.values():
            path.write_text("{")
        old = time.time() - records.STALE_TEMP_S - 10
        for key in ("other_host_old", "live_but_ancient"):
            os.utime(files[key], (old, old))
        assert records.clean_temp_files(tmp_path) == 4
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            files[k].name for k in ("live", "other_host_young")
        )
    finally:
        live.kill()
        live.wait()
