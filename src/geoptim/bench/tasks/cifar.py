"""CIFAR-10 / CIFAR-100 (the LPSGD paper's tables 1-2, the AGR paper's CIFAR-100 runs): VGG-11
(BN), ResNet-18, ResNet-50, ResNet-101.

Data from a local folder in the standard python-pickle layout (``data_dir`` option, else
``$GEOPTIM_DATA``, else ``~/data``; see :func:`geoptim.bench.data.load_cifar`), per-channel
normalisation, training augmentation: random 32x32 crop of the 4-padded image and horizontal
flip (tensor ops, seeded per epoch). Batch size 128, 200 epochs for ``full`` (the paper's setting;
GPU only: ``device`` ``"auto"`` picks CUDA when present). Train metrics are measured on the first
``eval_train_size`` (10000) training images without augmentation, test metrics on the whole test
set; ``n_val`` (5000) training images, fixed (seed 0), are held out for validation. The
``quick`` budget is a smoke run (two epochs of 20 mini-batches).

GPU training options (:class:`GPUTask`, shared with the image-folder tasks): ``device``,
``amp="bf16"`` (autocast), ``channels_last`` and ``compile`` (``torch.compile`` of the model), all
off by default. The paper presets are looked up per architecture (``PRESET_OPTIONS``).
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from geoptim.bench.data import (
    CIFAR_LAYOUT,
    TensorData,
    augment_cifar,
    hold_out,
    load_cifar,
    normalize_cifar,
)
from geoptim.bench.models import ACTIVATIONS, AMP_DTYPES, CIFAR_MODELS, accelerate
from geoptim.bench.records import write_atomic
from geoptim.bench.tasks.base import TrainableTask, option

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
DEVICES = ("auto", "cuda", "cpu")
STAND_IN_TRAIN, STAND_IN_TEST = 1024, 16
"""Images of the stand-in data (:meth:`CifarTask.write_stand_in`): enough full batches of 128
for the dry run to time a few steps."""


@dataclasses.dataclass
class GPUTask(TrainableTask):
    """A trainable task with the options of GPU training: ``device`` (``"auto"``: CUDA when
    present), ``amp`` (``"none"`` or ``"bf16"`` autocast), ``channels_last`` and ``compile``; a
    subclass builds its network in ``_network`` and gets it wrapped
    (:func:`geoptim.bench.models.accelerate`)."""

    PRESET_OPTIONS: ClassVar[tuple[str, ...]] = ("model",)
    """The options that select the papers' preset (:mod:`geoptim.bench.presets`)."""

    device: str = option("auto", choices=DEVICES)
    amp: str = option("none", choices=tuple(AMP_DTYPES))
    channels_last: bool = False
    compile: bool = False

    def _network(self) -> nn.Module:
        raise NotImplementedError

    def estimated_seconds(self, budget: dict[str, Any], optimizer: str | None = None) -> float:
        """0: a GPU task has no measured CPU cost (so a plan needs no data folder to read the
        steps per epoch from, and falls back to its rough per-run figure)."""
        return 0.0

    def _build_model(self) -> nn.Module:
        return accelerate(self._network(), self.amp, self.channels_last, self.compile)


@dataclasses.dataclass
class CifarTask(GPUTask):
    name: ClassVar[str] = "cifar10"
    description: ClassVar[str] = (
        "CIFAR-10 from a local pickle folder, ResNet-18/50/101 or VGG-11, crop+flip augmentation"
    )

    model: str = option("resnet18", choices=tuple(CIFAR_MODELS))
    activation: str = option("relu", choices=ACTIVATIONS)
    batch_size: int = option(128, ge=1)
    data_dir: str | None = None
    eval_train_size: int = option(10000, ge=1)
    n_val: int = option(5000, ge=0)

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {"quick": {"epochs": 2, "batches_per_epoch": 20}, "full": {"epochs": 200}}

    def _network(self) -> nn.Module:
        return CIFAR_MODELS[self.model](NUM_CLASSES[self.name], self.activation)

    def make_data(self, seed: int) -> TensorData:
        train, (x_te, y_te) = load_cifar(self.name, self.data_dir)
        (x_tr, y_tr), (x_va, y_va) = hold_out(train, self.n_val)
        return TensorData(
            normalize_cifar(x_tr, self.name),
            y_tr,
            normalize_cifar(x_te, self.name),
            y_te,
            val=(normalize_cifar(x_va, self.name), y_va),
            batch_size=self.batch_size,
            seed=seed,
            augment=_augment,
            eval_batch_size=1000,
            eval_train_size=self.eval_train_size,
        )

    def write_stand_in(self, root: Path) -> dict[str, Any]:
        """Write a small fake dataset in the python-pickle layout under ``root`` (random images
        and labels, fixed seed: :data:`STAND_IN_TRAIN` training and :data:`STAND_IN_TEST` test
        images) and return the overrides that train on it: ``data_dir``, and a validation split
        and train-metric subset that fit it (for the smoke suite and the dry run's timing)."""
        sub, train_files, test_files, label_key, num_classes = CIFAR_LAYOUT[self.name]
        gen = np.random.default_rng(0)
        per_file = {name: -(-STAND_IN_TRAIN // len(train_files)) for name in train_files}
        per_file.update({name: STAND_IN_TEST for name in test_files})
        for name, count in per_file.items():
            entry = {
                b"data": gen.integers(0, 256, (count, 3072), dtype=np.uint8),
                label_key: gen.integers(0, num_classes, count).tolist(),
            }
            write_atomic(root / sub / name, functools.partial(pickle.dump, entry))
        return {"data_dir": str(root), "n_val": 8, "eval_train_size": 8}

    def nominal_steps_per_epoch(self) -> int:
        """Mini-batches per epoch on the real dataset (50000 training images less ``n_val``),
        whether or not it is here (the dry run's estimate)."""
        return -(-(50000 - self.n_val) // self.batch_size)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return augment_cifar(x, gen)


@dataclasses.dataclass
class Cifar100Task(CifarTask):
    name: ClassVar[str] = "cifar100"
    description: ClassVar[str] = (
        "CIFAR-100 from a local pickle folder, ResNet-18/50/101 or VGG-11, crop+flip augmentation"
    )
