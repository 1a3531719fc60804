"""``geoptim speed`` runs end to end on tiny sizes and writes its table, JSON and plot."""

import json

import pytest

from geoptim import cli
from geoptim.cli import speed


def test_speed_command_writes_table_json_and_plot(tmp_path):
    rows = ["copy", "sgdm_foreach", "sgdm_fused", "adamw_fused", "lion", "adan_agr", "lion:foreach"]
    argv = ["speed", "--sizes", "3000", "20000", "--tensors", "4", "--rounds", "2"]
    argv += ["--threads", "1", "--out", str(tmp_path), "--optimizers", *rows]
    assert cli.main(argv) == 0
    table = (tmp_path / "speed.md").read_text()
    assert "geoptim Lion (foreach)" in table and "x SGDm foreach" in table
    results = json.loads((tmp_path / "speed.json").read_text())["results"]
    assert {r["size"] for r in results} == {3000, 20000}
    by_name = {(r["name"], r["size"]): r for r in results}
    assert by_name[("sgdm_foreach", 3000)]["x_sgdm_foreach"] == pytest.approx(1.0)
    assert (
        by_name[("adan_agr", 3000)]["base"] == "adan"
        and by_name[("adan_agr", 3000)]["x_base"] is None
    )
    assert by_name[("lion", 20000)]["state_bytes_per_param"] == pytest.approx(4.0)
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_every_default_row_builds_and_steps():
    for name in speed.available():
        row = speed._Row(speed._resolve(name), 64, 2, "cpu")
        row.step()


def test_unknown_rows_are_rejected(tmp_path, capsys):
    assert cli.main(["speed", "--optimizers", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown row" in capsys.readouterr().err
    with pytest.raises(ValueError, match="geoptim optimizers only"):
        speed._resolve("sgdm_fused:foreach")
