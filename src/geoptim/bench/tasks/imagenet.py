"""ImageNet-1K and Tiny-ImageNet from local class-per-folder JPEGs (nothing is downloaded).

* ``imagenet`` (the LPSGD paper's table 3, the SepNorm paper's table 2): ResNet-50 / ResNet-101
  (7x7 stem) or VGG-11-BN at 224 x 224, 1000 classes; batch 128 and 60 epochs for ``full`` (the
  LPSGD paper's table 6).
* ``tinyimagenet`` (the AGR paper's table 5): the CIFAR-style ResNet-18/50/101 or VGG-11 at
  64 x 64, 200 classes; batch 256 (the paper's 128 per GPU on two GPUs) and 200 epochs.

The folder (``data_dir``, else ``$GEOPTIM_DATA/<folder>``, else ``~/data/<folder>``) holds
``train/<class>/`` and ``val/<class>/`` (ImageNet) or Tiny-ImageNet's own ``val/images/`` with
``val/val_annotations.txt`` (:func:`geoptim.bench.data.scan_image_folder`). Training images go
through a random resized crop (scale ``[min_scale, 1]``) and a flip, evaluation images through
resize + centre crop (``crop_ratio``); ``n_val`` training images (fixed, seed 0) are held out for
validation and the folder's ``val`` images are the test set. ``workers`` ``DataLoader``
processes decode the JPEGs; the batches depend on ``(seed, epoch)`` only. The GPU options
(``device``, ``amp``, ``channels_last``, ``compile``) are those of
:class:`geoptim.bench.tasks.cifar.GPUTask`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from geoptim.bench.data import FolderData, ImageTransform, data_root, write_image_folder
from geoptim.bench.models import ACTIVATIONS, CIFAR_MODELS, IMAGENET_MODELS, imagenet_model, vgg11
from geoptim.bench.tasks.base import option
from geoptim.bench.tasks.cifar import GPUTask


@dataclasses.dataclass
class ImageNetTask(GPUTask):
    name: ClassVar[str] = "imagenet"
    description: ClassVar[str] = (
        "ImageNet-1K from a local class-per-folder JPEG tree, ResNet-50/101 or VGG-11-BN"
    )
    FOLDER: ClassVar[str] = "imagenet"
    NUM_CLASSES: ClassVar[int] = 1000
    PRESET_OPTIONS: ClassVar[tuple[str, ...]] = ("model", "batch_size")
    """The batch size selects the preset too: the LPSGD paper trains at 128, the SepNorm paper's
    table 2 at 64, 256 and 512 (linear lr scaling)."""

    model: str = option("resnet50", choices=IMAGENET_MODELS)
    activation: str = option("relu", choices=ACTIVATIONS)
    batch_size: int = option(128, ge=1)
    data_dir: str | None = None
    image_size: int = option(224, ge=8)
    crop_ratio: float = option(0.875, gt=0.0, le=1.0)
    min_scale: float = option(0.08, gt=0.0, le=1.0)
    n_val: int = option(10000, ge=0)
    eval_train_size: int = option(10000, ge=1)
    workers: int = option(8, ge=0)

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {"quick": {"epochs": 1, "batches_per_epoch": 2}, "full": {"epochs": 60}}

    def _network(self) -> nn.Module:
        return imagenet_model(self.model, self.NUM_CLASSES, self.activation)

    def folder(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir else data_root() / self.FOLDER

    def make_data(self, seed: int) -> FolderData:
        return FolderData(
            self.folder(),
            ImageTransform(self.image_size, self.crop_ratio, self.min_scale),
            batch_size=self.batch_size,
            seed=seed,
            n_val=self.n_val,
            workers=self.workers,
            eval_train_size=self.eval_train_size,
        )

    def write_stand_in(self, root: Path) -> dict[str, Any]:
        """Write a fake folder (3 classes of 4 small JPEGs, 2 test images each) under ``root``
        and return the overrides that train on it at 32 x 32 in the main process."""
        classes = [f"n{index:08d}" for index in range(3)]
        write_image_folder(root, classes, per_class=4, tiny_val=self.FOLDER != "imagenet")
        return {
            "data_dir": str(root),
            "image_size": 32,
            "n_val": 2,
            "workers": 0,
            "eval_train_size": 4,
        }


@dataclasses.dataclass
class TinyImageNetTask(ImageNetTask):
    name: ClassVar[str] = "tinyimagenet"
    description: ClassVar[str] = (
        "Tiny-ImageNet (64x64, 200 classes) from its local folder, ResNet-18/50/101 or VGG-11"
    )
    FOLDER: ClassVar[str] = "tiny-imagenet-200"
    NUM_CLASSES: ClassVar[int] = 200
    PRESET_OPTIONS: ClassVar[tuple[str, ...]] = ("model",)

    model: str = option("resnet18", choices=tuple(CIFAR_MODELS))
    batch_size: int = option(256, ge=1)
    image_size: int = option(64, ge=8)
    crop_ratio: float = option(1.0, gt=0.0, le=1.0)
    n_val: int = option(5000, ge=0)

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {"quick": {"epochs": 1, "batches_per_epoch": 2}, "full": {"epochs": 200}}

    def _network(self) -> nn.Module:
        if self.model == "vgg11":
            return vgg11(self.NUM_CLASSES, self.activation, spatial=self.image_size)
        return CIFAR_MODELS[self.model](self.NUM_CLASSES, self.activation)
