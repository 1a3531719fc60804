"""Bad command lines: each one is refused before any work, with one line on stderr.

Every case runs ``geoptim.cli.main(argv)`` in-process with the functions that do the work
(training, timing, the runner) replaced by ones that fail the test, in an empty working
directory that must stay empty; two cases run the real entry point in a subprocess.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from geoptim import cli
from geoptim.bench import records
from geoptim.bench.tasks.base import Task, check_options, option

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TORCHRUN_BAD_RANK = {
    "RANK": "3",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "localhost",
    "MASTER_PORT": "29500",
}


def bad(command: str, message: str, env: dict[str, str] | None = None, marks=()) -> object:
    """A case: the command line (its paths relative to a directory holding only ``afile``, a
    regular file, ``empty/`` and ``bad_preset.json``), a fragment of the error line, and
    environment variables to set."""
    return pytest.param(command, message, env or {}, marks=marks, id=command)


CASES = [
    # task options: type, range, choices, names -- refused by --dry-run already
    bad("bench --tasks digits:width=NaN", "option width must be an integer, got 'NaN'"),
    bad("bench --tasks digits:width=NaN --dry-run", "option width must be an integer"),
    bad("bench --tasks digits:width=abc --dry-run", "option width must be an integer"),
    bad("bench --tasks digits:width=3.7 --dry-run", "option width must be an integer"),
    bad("bench --tasks digits:width=0 --dry-run", "option width must be >= 1, got '0'"),
    bad("bench --tasks digits:width=-4 --dry-run", "option width must be >= 1"),
    bad("bench --tasks digits:width=true --dry-run", "option width must be an integer"),
    bad("bench --tasks digits:nosuch=1 --dry-run", "task 'digits' has no option 'nosuch'"),
    bad(
        "bench --tasks digits:model=alexnet --dry-run",
        "unknown model 'alexnet'; known: resnet, vgg",
    ),
    bad("bench --tasks digits:batch_size=0 --dry-run", "option batch_size must be >= 1"),
    bad("bench --tasks digits:model=vgg,width=0 --dry-run", "option width must be >= 1"),
    bad("bench --tasks grokking:train_frac=1.5 --dry-run", "option train_frac must be < 1"),
    bad("bench --tasks grokking:train_frac=0 --dry-run", "option train_frac must be > 0"),
    bad("bench --tasks grokking:tau=NaN --dry-run", "option tau must be finite"),
    bad("bench --tasks grokking:tau=Infinity --dry-run", "option tau must be finite"),
    bad("bench --tasks grokking:p=1 --dry-run", "option p must be >= 2"),
    bad("bench --tasks mnist1d:num_samples=0 --dry-run", "option num_samples must be >= 10"),
    bad(
        "bench --tasks quadratic:problem=hard --dry-run",
        "unknown problem 'hard'; known: strong, weak",
    ),
    bad("bench --tasks quadratic:w0=abc --dry-run", "option w0 must be a JSON list"),
    bad("bench --tasks quadratic:w0=[1,2,3] --dry-run", "option w0 must have 2 items"),
    bad("bench --tasks quadratic:target_frac=-1 --dry-run", "option target_frac must be > 0"),
    bad("bench --tasks cifar10:eval_train_size=0 --dry-run", "option eval_train_size must be >= 1"),
    bad("bench --tasks digits:width --dry-run", "bad task option 'width'"),
    bad("bench --tasks nosuch --dry-run", "unknown task 'nosuch'"),
    bad("bench --tasks digits:width=8,width=16 --dry-run", "task option 'width' given twice"),
    bad("bench --tasks digits width=8 --dry-run", "task option 'width=8' follows no task"),
    bad("bench --tasks , --dry-run", "--tasks names no task"),
    # counts, names, choices, preset files
    bad("bench --seeds 0", "argument --seeds: expected a positive integer, got '0'"),
    bad("bench --seeds 1.5", "expected a positive integer"),
    bad("bench --workers -1", "argument --workers: expected a positive integer"),
    bad("bench --workers 0", "expected a positive integer"),
    bad("bench --suite huge", "argument --suite: invalid choice"),
    bad("bench --optimizers adamx", "unknown optimizer 'adamx'"),
    bad("bench --optimizers ,", "--optimizers names no optimizer"),
    bad("bench --presets best", "argument --presets: invalid choice"),
    bad("bench --preset-file missing.json", "cannot read preset file"),
    bad("bench --preset-file empty", "cannot read preset file"),
    bad(
        "bench --tasks digits --optimizers sgdm --preset-file bad_preset.json",
        "bad hyper-parameters for sgdm",
    ),
    bad("bench --nosuchflag", "unrecognized arguments: --nosuchflag"),
    # the output directory, found bad before any run
    bad("bench --tasks quadratic --out afile", "afile is a file, not a directory"),
    bad("bench --tasks quadratic --out afile/sub", "afile is a file, not a directory"),
    bad("bench --tasks quadratic --out afile --dry-run", "afile is a file, not a directory"),
    bad("bench --tasks quadratic --out /sys/geoptim-out", "cannot write to --out /sys/geoptim-out"),
    bad("bench --tasks quadratic --out=", "--out is empty"),
    bad("report missing", "'missing' is not a directory"),
    bad("report afile", "'afile' is not a directory"),
    bad("report", "the following arguments are required: DIR"),
    bad("report empty", "no records"),
    # tune
    bad("tune --task digits:width=0 --optimizer sgdm", "option width must be >= 1"),
    bad("tune --task digits:width=NaN --optimizer sgdm", "option width must be an integer"),
    bad("tune --task digits --optimizer adamx", "unknown optimizer 'adamx'"),
    bad("tune --task digits --optimizer sgdm --budget 0", "argument --budget: expected a positive"),
    bad("tune --task nosuch --optimizer sgdm", "unknown task 'nosuch'"),
    bad("tune --task quadratic --optimizer sgd --out afile/x", "afile is a file, not a directory"),
    bad("tune --optimizer sgdm", "the following arguments are required: --task"),
    bad("tune --task cifar10:data_dir=missing --optimizer sgdm", "cifar10 folder not found"),
    # curvature
    bad("curvature --hessian-samples 0", "argument --hessian-samples: expected a positive integer"),
    bad("curvature --slq-steps 0", "argument --slq-steps: expected a positive integer"),
    bad("curvature --slq-probes 0", "argument --slq-probes: expected a positive integer"),
    bad("curvature --k 0", "argument --k: expected a positive integer"),
    bad("curvature --trace-samples 2", "argument --trace-samples: expected an integer >= 10"),
    bad("curvature --epochs 0", "argument --epochs: expected a positive integer"),
    bad("curvature --seed -1", "argument --seed: expected an integer >= 0"),
    bad("curvature --task nosuch", "unknown task 'nosuch'"),
    bad("curvature --task quadratic", "task 'quadratic' has no model to take a Hessian of"),
    bad("curvature --optimizer adamx", "unknown optimizer 'adamx'"),
    bad("curvature --option width=0", "option width must be >= 1"),
    bad("curvature --task digits:model=vgg,width=-1", "option width must be >= 1"),
    bad("curvature --option width=abc", "option width must be an integer"),
    bad("curvature --task cifar10 --option data_dir=missing", "cifar10 folder not found"),
    bad("curvature --lr NaN", "argument --lr: expected a finite number >= 0, got 'NaN'"),
    bad("curvature --lr -1", "argument --lr: expected a finite number >= 0"),
    bad("curvature --hparam nosuch=1", "bad hyper-parameters for sgdm"),
    bad("curvature --hparam momentum=NaN", "hyper-parameter momentum must be finite"),
    bad("curvature --at a,b", "argument --at: expected comma-separated epochs"),
    bad("curvature --epochs 2 --at 5", "no epoch of --at [5] lies within --epochs 2"),
    bad("curvature --out afile", "afile is a file, not a directory"),
    bad("curvature --mode test", "argument --mode: invalid choice"),
    # train
    bad("train --distributed ddp", "--distributed ddp runs under torchrun (RANK, WORLD_SIZE"),
    bad("train --distributed fsdp2 --task digits", "--distributed fsdp2 runs under torchrun"),
    bad(
        "train --distributed ddp",
        "inconsistent torchrun environment: RANK=3, WORLD_SIZE=2",
        TORCHRUN_BAD_RANK,
    ),
    bad("train --distributed ddp", "must be integers", {**TORCHRUN_BAD_RANK, "RANK": "zero"}),
    bad("train --distributed nope", "argument --distributed: invalid choice"),
    bad("train --task nosuch", "unknown task 'nosuch'"),
    bad("train --task quadratic", "task 'quadratic' has no model and data"),
    bad("train --optimizer adamx", "unknown optimizer 'adamx'"),
    bad("train --epochs 0", "argument --epochs: expected a positive integer"),
    bad("train --lr NaN", "argument --lr: expected a finite number >= 0"),
    bad("train --lr abc", "argument --lr: expected a finite number >= 0, got 'abc'"),
    bad("train --weight-decay -1", "argument --weight-decay: expected a finite number >= 0"),
    bad("train --hparam betas=abc --optimizer adamw", "bad hyper-parameters for adamw"),
    bad("train --hparam nosuch=1", "bad hyper-parameters for sepnorm"),
    bad("train --hparam lr_schedule=zigzag", "unknown lr_schedule 'zigzag'"),
    bad("train --hparam warmup_frac=2", "warmup_frac must lie in [0, 1)"),
    bad("train --hparam oops", "argument --hparam: expected key=value, got 'oops'"),
    bad("train --task-option width=NaN", "option width must be an integer"),
    bad("train --task-option width=0", "option width must be >= 1"),
    bad("train --task digits:width=0", "option width must be >= 1"),
    bad("train --task cifar10 --task-option data_dir=missing", "cifar10 folder not found"),
    bad("train --hparam betas=[0.9] --optimizer adamw", "bad hyper-parameters for adamw"),
    bad("train --hparam p_max=0 --optimizer lpsgdm", "p_max must be a number >= 2"),
    bad("train --hparam p_max=6 --optimizer sgdm", "bad hyper-parameters for sgdm"),
    bad("train --batches-per-epoch 0", "argument --batches-per-epoch: expected a positive integer"),
    bad("train --out afile/x.json", "afile is a file, not a directory"),
    bad("train --out empty", "--out empty is a directory; expected a file name"),
    bad("train --backend mpi2", "argument --backend: invalid choice"),
    bad("train --backend nccl", "--backend nccl needs CUDA", marks=NO_CUDA),
    # speed
    bad("speed --numel 0", "argument --numel: expected a size >= 1"),
    bad("speed --numel abc", "argument --numel: expected a size >= 1"),
    bad("speed --numel inf", "argument --numel: expected a size >= 1"),
    bad("speed --tensors 0", "argument --tensors: expected a positive integer"),
    bad("speed --rounds 0", "argument --rounds: expected a positive integer"),
    bad("speed --threads 1 -1", "argument --threads: expected a positive integer"),
    bad("speed --budget -1", "argument --budget: expected a positive number"),
    bad("speed --budget NaN", "argument --budget: expected a positive number"),
    bad("speed --cases fp16", "argument --cases: invalid choice: 'fp16'"),
    bad("speed --optimizers nope", "unknown row 'nope'"),
    bad("speed --optimizers sgdm_fused:foreach", "':foreach' applies to geoptim optimizers"),
    bad("speed --json afile/x.json", "afile is a file, not a directory"),
    bad("speed --markdown empty", "--markdown empty is a directory; expected a file name"),
    bad("speed --device cuda", "CUDA is not available", marks=NO_CUDA),
    bad("nosuchcommand", "argument COMMAND: invalid choice: 'nosuchcommand'"),
]


def _forbidden(*args, **kwargs):
    raise AssertionError("work started for a command line that should have been refused")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The working directory: the test inputs and nothing else; no torchrun environment."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a directory\n")
    (tmp_path / "empty").mkdir()
    preset = {
        "task": "digits",
        "optimizer": "sgdm",
        "hparams": {"lr": -1.0},
        "provenance": {"source": "geoptim tune", "selected_on": "validation"},
    }
    (tmp_path / "bad_preset.json").write_text(json.dumps(preset))
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def no_work(monkeypatch):
    """Every function that starts work fails the test."""
    import geoptim.bench.experiments as experiments
    import geoptim.bench.runner as runner
    import geoptim.bench.tune as tune
    import geoptim.cli.speed as speed
    import geoptim.cli.train as train

    for module, name in (
        (runner, "execute"),
        (tune, "tune"),
        (speed, "time_case"),
        (experiments, "curvature_experiment"),
        (train, "init_from_env"),
        (train, "wrap_model"),
    ):
        monkeypatch.setattr(module, name, _forbidden)


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize(("command", "message", "env"), CASES)
def test_bad_command_line_is_one_error_line_and_no_work(
    workdir, no_work, capsys, monkeypatch, command, message, env
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = command.split()
    if argv[0] in ("bench", "tune", "curvature") and not any(a.startswith("--out") for a in argv):
        argv += ["--out", "out"]
    before = _files(workdir)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("geoptim: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.out + captured.err
    assert _files(workdir) == before


def test_good_dry_run_with_options_still_works(workdir, no_work, capsys):
    argv = [
        "bench",
        "--tasks",
        "digits:model=vgg,width=8",
        "quadratic:w0=[1,2],problem=weak",
        "--optimizers",
        "sgd",
        "--seeds",
        "1",
        "--dry-run",
        "--out",
        "out",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "digits[model=vgg,width=8] sgd seed=0" in out
    assert "quadratic[problem=weak,w0=(1.0, 2.0)] sgd seed=0" in out
    assert out.strip().endswith("2 runs")
    assert not (workdir / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_out_is_refused(workdir, no_work, capsys):
    locked = workdir / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert cli.main(["bench", "--tasks", "quadratic", "--out", "locked/out"]) == 2
        assert "cannot write to --out locked/out" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- the option declarations


@dataclasses.dataclass
class Toy(Task):
    name: ClassVar[str] = "toy"

    count: int = option(2, ge=1)
    rate: float = option(0.5, gt=0, le=1)
    kind: str = option("a", choices=("a", "b"))
    flag: bool = False
    limit: float | None = None
    point: tuple[float, float] = (0.0, 0.0)


def test_options_are_read_from_text_by_their_declared_types():
    text = {
        "count": "3",
        "rate": "1",
        "kind": "b",
        "flag": "true",
        "limit": "none",
        "point": "[1, 2.5]",
    }
    assert check_options(Toy, text) == {
        "count": 3,
        "rate": 1.0,
        "kind": "b",
        "flag": True,
        "limit": None,
        "point": (1.0, 2.5),
    }
    assert check_options(Toy, {"count": 4, "limit": 2}) == {"count": 4, "limit": 2.0}


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"count": 2.0}, "option count must be an integer"),
        ({"count": True}, "option count must be an integer"),
        ({"count": 0}, "option count must be >= 1, got 0"),
        ({"rate": 0}, "option rate must be > 0"),
        ({"rate": 1.5}, "option rate must be <= 1"),
        ({"rate": float("nan")}, "option rate must be finite"),
        ({"rate": "1e400"}, "option rate must be finite"),
        ({"kind": "c"}, "task 'toy': unknown kind 'c'; known: a, b"),
        ({"kind": 1}, "option kind must be a string"),
        ({"flag": "yes"}, "option flag must be true or false"),
        ({"limit": "inf"}, "option limit must be finite"),
        ({"point": [1]}, "option point must have 2 items"),
        ({"point": ["x", 1]}, "option point must be a number"),
        ({"other": 1}, "task 'toy' has no option 'other'; its options: count, flag"),
    ],
)
def test_bad_option_values_name_the_option_and_the_rule(overrides, problem):
    with pytest.raises(ValueError) as info:
        check_options(Toy, overrides)
    assert problem in str(info.value)


# ---------------------------------------------------------------- other failures


def test_internal_errors_keep_their_traceback(workdir, monkeypatch):
    import geoptim.cli.report as cli_report

    def broken(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(cli_report, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["report", "empty"])


def test_disk_full_keeps_finished_records_and_removes_the_partial_one(workdir, capsys, monkeypatch):
    """The second record's write fails with ENOSPC: one error line, a nonzero exit, the first
    record intact, no other file left in the records directory."""
    real_fsync = os.fsync
    record_writes = []

    def fsync(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.parent == workdir / "out" / "records" and "probe" not in path.name:
            record_writes.append(path)
            if len(record_writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    argv = [
        "bench",
        "--tasks",
        "quadratic",
        "--optimizers",
        "sgd",
        "signsgd",
        "--seeds",
        "1",
        "--workers",
        "1",
        "--quiet",
        "--out",
        "out",
    ]
    status = cli.main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert status not in (0, 2)
    assert len(lines) == 1 and lines[0].startswith("geoptim: error: no space left")
    finished = list(records.iter_records("out"))
    assert len(finished) == 1
    left = sorted(path.name for path in (workdir / "out" / "records").iterdir())
    assert left == [f"{finished[0]['run_id']}.json"]


def test_the_real_entry_point(tmp_path):
    """``python -m geoptim``: the same one line and exit status 2 (both commands at once)."""
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    commands = [
        ["bench", "--tasks", "digits:width=NaN", "--dry-run"],
        ["curvature", "--hessian-samples", "0"],
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "geoptim", *argv],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in commands
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 2
        assert len(err.splitlines()) == 1 and err.startswith("geoptim: error: "), err
    assert not list(tmp_path.iterdir())
