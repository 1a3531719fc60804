"""Mid-run checkpoints: a run stopped at any epoch boundary (or within an epoch) and resumed ends
bit-identical to a run never stopped -- weights, curves, final metrics -- including a run
SIGKILLed during an epoch in another process; unusable checkpoints are ignored with one warning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from geoptim.bench import records, training
from geoptim.bench.checkpoints import Checkpoint, checkpoint_path
from geoptim.bench.records import RunSpec
from geoptim.bench.tasks import get_task

TASK = {"width": 8, "n_train": 120}  # digits: 2 batches of 64 per epoch
EPOCHS = 3
HPARAMS = {
    "lpsgdm": {"lr": 0.05, "p_max": 6.0, "momentum": 0.9, "weight_decay": 5e-4},
    "adamw_agr": {"lr": 3e-3, "weight_decay": 0.05},
    "sgdm_rms": {"lr": 0.05, "p_max": 6.0, "momentum": 0.9, "weight_decay": 5e-4},
}
ADAPTIVE = {"p_schedule": "curvature", "p_estimator": "gradient", "p_interval": 1}
HPARAMS["lpsgdm:curvature"] = {**HPARAMS["lpsgdm"], **ADAPTIVE}
HPARAMS["lpsgdm:shuffled"] = {**HPARAMS["lpsgdm"], **ADAPTIVE, "p_schedule": "shuffled"}
TIMES = ("time_s", "estimator_s", "estimator_fraction")
"""Entries that are wall-clock measurements, so differ between any two runs."""


class Stop(Exception):
    """Raised by :class:`StopAfter` right after the checkpoint it waits for: a crash."""


class StopAfter(Checkpoint):
    """A checkpoint that ends the run (raises :class:`Stop`) once it has saved at ``step``."""

    stop_at: int = 0

    def save(self, model: Any, setup: Any, loop: dict[str, Any]) -> None:
        super().save(model, setup, loop)
        if loop["step"] == self.stop_at:
            raise Stop


class KeepModel:
    """A callback holding the model trained (its weights are the final ones after the run)."""

    def on_train_begin(self, model: torch.nn.Module, optimizer: Any) -> None:
        self.model = model


def run(optimizer: str, checkpoint: Checkpoint | None, budget: dict[str, Any] | None = None):
    keep = KeepModel()
    task = get_task("digits", **TASK)
    budget = budget or {"epochs": EPOCHS}
    name = optimizer.split(":")[0]
    result = task.run(name, HPARAMS[optimizer], 0, budget, None, [keep], checkpoint)
    return result, {k: v.clone() for k, v in keep.model.state_dict().items()}


def assert_same_run(result, weights, reference) -> None:
    ref_result, ref_weights = reference
    assert weights.keys() == ref_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, ref_weights[name]), name
    curves = {k: v for k, v in result["curves"].items() if k != "time_s"}
    assert curves == {k: v for k, v in ref_result["curves"].items() if k != "time_s"}
    assert {k: v for k, v in result["final"].items() if k != "time_s"} == {
        k: v for k, v in ref_result["final"].items() if k != "time_s"
    }
    assert result["steps"] == ref_result["steps"]
    assert {k: v for k, v in result["extra"].items() if k not in TIMES} == {
        k: v for k, v in ref_result["extra"].items() if k not in TIMES
    }


@pytest.mark.parametrize(
    "optimizer", ["lpsgdm", "adamw_agr", "sgdm_rms", "lpsgdm:curvature", "lpsgdm:shuffled"]
)
def test_resuming_at_every_epoch_boundary_is_exact(optimizer, tmp_path):
    reference = run(optimizer, None)
    steps_per_epoch = reference[0]["steps"] // EPOCHS
    for epoch in range(1, EPOCHS):
        path = tmp_path / f"{epoch}.pt"
        stopping = StopAfter(path, "key")
        stopping.stop_at = epoch * steps_per_epoch
        with pytest.raises(Stop):
            run(optimizer, stopping)
        assert path.is_file()
        assert_same_run(*run(optimizer, Checkpoint(path, "key")), reference)


@pytest.mark.parametrize(
    ("control", "paired_optimizer", "paired_schedule"),
    [("sgdm_rms", "lpsgdm", None), ("lpsgdm:shuffled", "lpsgdm", "curvature")],
)
def test_a_resumed_control_does_not_train_its_paired_run_again(
    control, paired_optimizer, paired_schedule, tmp_path, monkeypatch
):
    """``sgdm_rms`` replays its LPSGDM run's update RMS, the shuffled p control its adaptive
    run's p: both keep what they replay beside the checkpoint."""
    reference = run(control, None)
    stopping = StopAfter(tmp_path / "control.pt", "key")
    stopping.stop_at = reference[0]["steps"] // EPOCHS
    with pytest.raises(Stop):
        run(control, stopping)

    plain_train = training.train

    def no_paired_run(task, optimizer, hparams, *args, **kwargs):
        if optimizer == paired_optimizer and hparams.get("p_schedule") == paired_schedule:
            raise AssertionError("the paired run was trained again")
        return plain_train(task, optimizer, hparams, *args, **kwargs)

    monkeypatch.setattr(training, "train", no_paired_run)
    checkpoint = Checkpoint(tmp_path / "control.pt", "key")
    assert_same_run(*run(control, checkpoint), reference)
    checkpoint.discard()
    assert not list(tmp_path.iterdir())  # the checkpoint and its part


def test_resuming_within_an_epoch_is_exact(tmp_path):
    budget = {"epochs": 2}
    reference = run("lpsgdm", None, budget)
    path = tmp_path / "mid.pt"
    stopping = StopAfter(path, "key", every_steps=3)
    stopping.stop_at = 3  # the second epoch's first batch is next
    with pytest.raises(Stop):
        run("lpsgdm", stopping, budget)
    assert torch.load(path, weights_only=True)["batch"] == 1
    assert_same_run(*run("lpsgdm", Checkpoint(path, "key"), budget), reference)


def stopped_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "run.pt"
    stopping = StopAfter(path, "key")
    stopping.stop_at = 2
    with pytest.raises(Stop):
        run("lpsgdm", stopping)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other run", "group writable"])
def test_an_unusable_checkpoint_is_ignored_with_one_warning(damage, tmp_path, capsys):
    reference = run("lpsgdm", None)
    path = stopped_checkpoint(tmp_path)
    key = "key"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "other run":
        key = "another key"
    else:
        path.chmod(0o660)
    capsys.readouterr()
    assert_same_run(*run("lpsgdm", Checkpoint(path, key)), reference)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "starting over" in err[0]


def test_a_checkpoint_that_does_not_fit_the_model_is_dropped_and_the_run_starts_over(
    tmp_path, capsys
):
    path = stopped_checkpoint(tmp_path)
    reference = run("adamw_agr", None)  # another optimizer: its state does not load
    capsys.readouterr()
    assert_same_run(*run("adamw_agr", Checkpoint(path, "key")), reference)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit" in err[0]


# The run of the kill test, in its own process: the runner's run_one with a checkpoint at every
# epoch end; it prints each step it takes (then sleeps ``delay`` s, so an epoch lasts long enough
# to be killed in) and saves the final weights next to the record.
WORKER = """
import json, sys, time
import torch
from geoptim.bench import runner, training
from geoptim.bench.checkpoints import CheckpointPolicy
from geoptim.bench.records import RunSpec

spec = RunSpec(**json.loads(sys.argv[1]))
out, weights, delay = sys.argv[2], sys.argv[3], float(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))  # the reference's: conv results depend on the count
plain_train = training.train

class Watch:
    def on_train_begin(self, model, optimizer):
        self.model = model
    def on_step(self, step, model, optimizer, loss):
        print(step, flush=True)
        time.sleep(delay)

def train(task, optimizer, hparams, seed, budget, progress=None, callbacks=(), checkpoint=None):
    watch = Watch()
    result = plain_train(task, optimizer, hparams, seed, budget, progress, [watch], checkpoint)
    torch.save(watch.model.state_dict(), weights)
    return result

training.train = train
outcome = runner.run_one(spec, out, checkpoints=CheckpointPolicy(min_interval_s=0.0))
print(outcome.status, outcome.error, flush=True)
"""


@pytest.mark.slow  # two fresh interpreters: ~15-30 s; the in-process tests above cover the rest
def test_a_run_sigkilled_during_an_epoch_resumes_and_ends_bit_identical(tmp_path):
    spec = RunSpec(
        task="digits",
        optimizer="lpsgdm",
        hparams=HPARAMS["lpsgdm"],
        seed=0,
        budget={"epochs": EPOCHS},
        task_overrides=TASK,
    )
    out, weights = tmp_path / "out", tmp_path / "weights.pt"
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-c", WORKER, json.dumps(spec.to_dict()), str(out), str(weights)]
    threads = str(torch.get_num_threads())
    killed = subprocess.Popen(
        [*command, "0.2", threads],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    steps_seen = []
    for line in killed.stdout:  # step 2 ends epoch 1 and its checkpoint is saved before step 3
        steps_seen.append(int(line))
        if steps_seen[-1] == 3:
            os.kill(killed.pid, signal.SIGKILL)  # during epoch 2, after its first batch
            break
    killed.wait(timeout=60)
    assert steps_seen and steps_seen[-1] == 3, killed.stderr.read()
    assert killed.returncode == -signal.SIGKILL
    assert checkpoint_path(out, spec.run_id).is_file()
    assert not records.record_path(out, spec.run_id).exists()

    resumed = subprocess.run(
        [*command, "0", threads], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    lines = resumed.stdout.split()
    assert lines[0] == "3", "the resumed run goes on from the end of epoch 1"
    assert "done" in lines, resumed.stdout + resumed.stderr
    assert not checkpoint_path(out, spec.run_id).exists(), "removed once the record is written"

    record = records.read_record(records.record_path(out, spec.run_id))
    reference, reference_weights = run("lpsgdm", None)
    result = {key: record["result"][key] for key in ("curves", "final", "steps", "extra")}
    final_weights = torch.load(weights, weights_only=True)
    assert_same_run(result, final_weights, (reference, reference_weights))
    assert record["result"]["extra"]["data_hash"] == reference["extra"]["data_hash"]
