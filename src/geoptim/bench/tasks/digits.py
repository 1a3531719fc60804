"""``sklearn`` digits: 1797 8x8 grey images, 10 classes, bundled with scikit-learn.

Made hard enough that optimizers differ (the full 1347-image training set saturates every method
at ~97% test accuracy): by default only ``n_train`` (NTRAIN) stratified training images, a
``label_noise`` (NOISE) fraction of whose labels are wrong; fixed stratified validation (300) and
test (450) sets with clean labels; pixels standardised with the training statistics
(:func:`geoptim.bench.data.load_digits_split`, ``split_seed`` 0). ``n_train=None,
label_noise=0`` restores the whole clean training set (1047 images). Models (option ``model``):
``"resnet"`` (:class:`geoptim.bench.models.DigitsResNet`: stem + two BasicBlocks with BatchNorm) or
``"vgg"`` (:class:`geoptim.bench.models.DigitsVGG`), ``width`` channels in the first stage,
activation ``"relu"`` or ``"leaky_relu"`` (the momentum-tracing study of the SepNorm paper needs
ReLU's exact zero gradients and a leaky control). Mini-batches of ``batch_size`` (64); train NLL and
test top-1 after every epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from geoptim.bench.data import TensorData, load_digits_split
from geoptim.bench.models import ACTIVATIONS, DigitsResNet, DigitsVGG
from geoptim.bench.tasks.base import TrainableTask, option

MODELS = ("resnet", "vgg")


@dataclasses.dataclass
class DigitsTask(TrainableTask):
    name: ClassVar[str] = "digits"
    STEP_SECONDS: ClassVar[float] = 7.4e-3
    EVAL_SECONDS: ClassVar[float] = 0.03
    description: ClassVar[str] = (
        "sklearn 8x8 digits, small ResNet or VGG with BatchNorm (ReLU or leaky ReLU), "
        "mini-batches; train NLL / test top-1 per epoch"
    )

    model: str = option("resnet", choices=MODELS)
    activation: str = option("relu", choices=ACTIVATIONS)
    width: int = option(16, ge=1)
    batch_size: int = option(64, ge=1)
    n_train: int | None = option(300, ge=10)
    label_noise: float = option(0.2, ge=0, lt=1)
    split_seed: int = option(0, ge=0)

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {"quick": {"epochs": 30}, "full": {"epochs": 100}}

    def _build_model(self) -> nn.Module:
        cls = DigitsResNet if self.model == "resnet" else DigitsVGG
        return cls(self.width, self.activation)

    def make_data(self, seed: int) -> TensorData:
        splits = load_digits_split(self.n_train, self.label_noise, self.split_seed)
        return TensorData.from_splits(splits, batch_size=self.batch_size, seed=seed)
