"""Run ids, atomic record writes, and what counts as a finished run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from geoptim.bench import records
from geoptim.bench.records import RunSpec


def spec(**changes):
    fields = dict(task="digits", optimizer="lpsgdm", hparams={"lr": 1e-3, "p_max": 6}, seed=0,
                  budget={"epochs": 5})
    fields.update(changes)
    return RunSpec(**fields)


def test_run_id_is_stable_and_ignores_key_order_and_bookkeeping():
    a = spec(hparams={"lr": 1e-3, "p_max": 6})
    b = spec(hparams={"p_max": 6, "lr": 1e-3}, suite="full", variant={"p_max": 6},
             preset="tuned")
    assert a.run_id == b.run_id
    assert len(a.run_id) == 16
    assert a.run_id == records.config_hash(json.loads(json.dumps(a.config())))


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"optimizer": "sgdm"}, {"hparams": {"lr": 2e-3, "p_max": 6}},
    {"budget": {"epochs": 6}}, {"task_overrides": {"model": "vgg"}}, {"task": "mnist1d"},
])
def test_run_id_changes_with_the_config(change):
    assert spec(**change).run_id != spec().run_id


def test_labels():
    variant = spec(task_overrides={"model": "vgg", "width": 8})
    assert variant.task_label == "digits[model=vgg,width=8]"
    assert spec(variant={"p_max": 4}).label == "lpsgdm(p_max=4)"
    assert spec(preset="tuned").label == "lpsgdm [tuned]"


def test_write_and_read_roundtrip_with_non_finite_values(tmp_path):
    s = spec()
    record = {"run_id": s.run_id, "config": s.config(),
              "result": {"final": {"loss": math.nan, "acc": (0.5, math.inf)}}}
    path = records.write_record(tmp_path, record)
    assert path == records.record_path(tmp_path, s.run_id)
    back = records.read_record(path)
    assert back["result"]["final"] == {"loss": None, "acc": [0.5, None]}
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


@pytest.mark.parametrize("content", [
    "", '{"run_id": "', "[]", '{"run_id": "other", "config": {}, "result": {}}',
    '{"run_id": "RID", "config": {}}',
])
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
