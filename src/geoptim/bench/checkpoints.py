"""Mid-run checkpoints of the shared training loop (:func:`geoptim.bench.training.train`).

A :class:`Checkpoint` is one file, ``OUT/checkpoints/<run id>.pt`` for a benchmark run
(:func:`checkpoint_path`), holding everything the loop's future depends on:

* the model's ``state_dict`` (weights and buffers: BatchNorm statistics), the optimizer's
  (its state and param groups: ``lr``, ``p``, AGR's step counter), the lr scheduler's and the p
  scheduler's;
* the loop's position: ``step``, the ``epoch`` and the ``batch`` index within it where training
  goes on (the batches of an epoch are a function of the run seed and the epoch, see
  :class:`geoptim.bench.data.TensorData`, so a resumed epoch regenerates them and skips the first
  ``batch``: the data order, augmentation and noise generators end in the same state);
* what the loop has gathered: the curves so far, the training time, AGR's probe values;
* the global torch RNG state (CPU, and every CUDA device's when CUDA is initialised): dropout
  and any other draw from the global generator.

A run restarted with the same spec resumes from it and ends bit-identical on CPU to a run never
interrupted (weights, curves, final metrics; ``time_s`` only counts the steps kept). The loop's
callbacks keep their own state: a run with callbacks that hold state does not resume exactly.

It is written at the end of an epoch, and every ``every_steps`` optimizer steps when set, but
never less than ``min_interval_s`` seconds after the previous one (short epochs are not worth a
write each), atomically (:func:`geoptim.bench.records.write_atomic`: a killed writer leaves the
previous checkpoint intact). It is read with ``torch.load(weights_only=True)``, which builds
tensors and plain containers only, never code, and only when the file belongs to this user and no
one else can write it. A file that cannot be read, is not a checkpoint of this run (its ``key``:
the run id and the hash of the geoptim sources) or does not fit the model is ignored with one
warning line, and the run starts over.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch
from torch import nn

from geoptim.bench.records import write_atomic

if TYPE_CHECKING:
    from geoptim.bench.training import OptimizerSetup

CHECKPOINTS_SUBDIR = "checkpoints"
FORMAT = 1
"""The checkpoint layout's version; a file of another layout is ignored."""
POSITION_KEYS = (
    "step",
    "epoch",
    "batch",
    "train_time",
    "curves",
    "agr_changes",
    "p_steps",
    "estimator_time",
)
"""The loop's own entries of a checkpoint (the ``loop`` dict :meth:`Checkpoint.save` takes)."""
DEFAULT_INTERVAL_S = 60.0
"""The benchmark's default least time between two checkpoints of a run: a kill loses at most
about a minute of training (and a run shorter than that is simply run again)."""


def checkpoint_path(out_dir: str | os.PathLike[str], run_id: str) -> Path:
    return Path(out_dir) / CHECKPOINTS_SUBDIR / f"{run_id}.pt"


def rng_state() -> dict[str, Any]:
    """The global torch generators' states: CPU, and each CUDA device's once CUDA is in use."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class Checkpoint:
    """The checkpoint file of one run (see module doc); ``key`` names the run it belongs to."""

    path: Path
    key: str
    every_steps: int | None = None
    min_interval_s: float = 0.0
    _last_save: float = field(default_factory=time.monotonic, init=False, repr=False)

    def due(self, step: int, epoch_end: bool) -> bool:
        """Whether to save after optimizer step ``step`` (``epoch_end``: it ended an epoch)."""
        at_position = epoch_end or bool(self.every_steps and step % self.every_steps == 0)
        return at_position and time.monotonic() - self._last_save >= self.min_interval_s

    def save(self, model: nn.Module, setup: OptimizerSetup, loop: dict[str, Any]) -> None:
        """Write the model, ``setup``'s optimizer and schedulers, the RNG states and ``loop``
        (:data:`POSITION_KEYS`) atomically."""
        state = {
            "format": FORMAT,
            "key": self.key,
            "model": model.state_dict(),
            "optimizer": setup.optimizer.state_dict(),
            "lr_scheduler": setup.lr_scheduler.state_dict(),
            "p_scheduler": None if setup.p_scheduler is None else setup.p_scheduler.state_dict(),
            "rng": rng_state(),
            **{name: loop[name] for name in POSITION_KEYS},
        }
        self._write(self.path, state)
        self._last_save = time.monotonic()

    def save_part(self, name: str, value: dict[str, Any]) -> None:
        """Keep ``value`` (tensors and plain containers) beside the checkpoint as part ``name``:
        a result the run computed once and must not lose (an ``sgdm_rms`` run's update-RMS
        schedule, measured by replaying its paired LPSGDM run)."""
        self._write(self._part_path(name), {"format": FORMAT, "key": self.key, name: value})

    def load_part(self, name: str) -> dict[str, Any] | None:
        """Part ``name`` saved by :meth:`save_part`, or ``None`` (missing or unusable: a
        warning)."""
        state = self._read(self._part_path(name), (name,))
        return None if state is None else state[name]

    def _part_path(self, name: str) -> Path:
        return self.path.with_name(f"{self.path.stem}.{name}{self.path.suffix}")

    @staticmethod
    def _write(path: Path, state: dict[str, Any]) -> None:
        def write(handle: BinaryIO) -> None:
            os.fchmod(handle.fileno(), 0o600)  # only this user reads or writes it
            torch.save(state, handle)

        write_atomic(path, write)

    def restore(self, model: nn.Module, setup: OptimizerSetup) -> dict[str, Any] | None:
        """Load the checkpoint into ``model`` and ``setup``, set the RNG states and return the
        loop's entries; ``None`` when there is no usable checkpoint (then nothing was changed).

        Raises :class:`CheckpointMismatch` (after a warning, with the file removed) when loading
        failed part-way: the caller must build the model and optimizer afresh."""
        state = self._read(self.path, POSITION_KEYS)
        if state is None:
            return None
        try:
            model.load_state_dict(state["model"])
            setup.optimizer.load_state_dict(state["optimizer"])
            setup.lr_scheduler.load_state_dict(state["lr_scheduler"])
            if (setup.p_scheduler is None) != (state["p_scheduler"] is None):
                raise ValueError("the p scheduler does not match")
            if setup.p_scheduler is not None:
                setup.p_scheduler.load_state_dict(state["p_scheduler"])
            set_rng_state(state["rng"])
        except Exception as err:
            self.discard()
            warn(f"checkpoint {self.path} does not fit this run ({_reason(err)}); starting over")
            raise CheckpointMismatch(str(self.path)) from None
        return {name: state[name] for name in POSITION_KEYS}

    def _read(self, path: Path, needed: Sequence[str]) -> dict[str, Any] | None:
        """The contents of ``path`` if it exists, is safe to read, is this run's and holds the
        ``needed`` entries."""
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        problem = None
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            problem = "not a file of this user"
        elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problem = "writable by other users"
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                problem = f"unreadable: {_reason(err)}"
            else:
                if not isinstance(state, dict) or state.get("format") != FORMAT:
                    problem = "not a checkpoint of this geoptim version"
                elif state.get("key") != self.key:
                    problem = "a checkpoint of another run or geoptim source"
                elif any(name not in state for name in needed):
                    problem = "incomplete"
        if problem is not None:
            warn(f"ignoring checkpoint {path} ({problem}); starting over")
            return None
        return state

    def discard(self) -> None:
        """Remove the checkpoint file and its parts (the run is recorded, or it is unusable)."""
        self.path.unlink(missing_ok=True)
        for part in self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}"):
            part.unlink(missing_ok=True)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the runs of a benchmark save mid-run checkpoints: at epoch ends, and every
    ``every_steps`` steps when set, at least ``min_interval_s`` seconds apart (see module doc)."""

    min_interval_s: float = DEFAULT_INTERVAL_S
    every_steps: int | None = None

    def for_run(self, out_dir: str | os.PathLike[str], run_id: str) -> Checkpoint:
        """The checkpoint of run ``run_id`` in ``out_dir`` (:func:`checkpoint_path`), keyed by
        the run id and the hash of the geoptim sources."""
        from geoptim.bench.records import source_hash

        return Checkpoint(
            checkpoint_path(out_dir, run_id),
            f"{run_id}:{source_hash()}",
            self.every_steps,
            self.min_interval_s,
        )


class CheckpointMismatch(RuntimeError):
    """A checkpoint failed to load part-way (see :meth:`Checkpoint.restore`)."""


def _reason(err: BaseException) -> str:
    """The first line of an error's message, with its type."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
