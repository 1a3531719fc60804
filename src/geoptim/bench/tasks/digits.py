"""``sklearn`` digits: 1797 8x8 grey images, 10 classes, bundled with scikit-learn.

Fixed stratified split (1347 train / 450 test, ``random_state=0``), pixels standardised with the
training statistics (:func:`geoptim.bench.data.load_digits_split`). Models (option ``model``):
``"resnet"`` (:class:`geoptim.models.DigitsResNet`: stem + two BasicBlocks with BatchNorm) or
``"vgg"`` (:class:`geoptim.models.DigitsVGG`), ``width`` channels in the first stage, activation
``"relu"`` or ``"leaky_relu"`` (the momentum-tracing study of the SepNorm paper needs ReLU's exact
zero gradients and a leaky control). Mini-batches of ``batch_size`` (64); train NLL and test top-1
after every epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from geoptim.bench.data import TensorData, load_digits_split
from geoptim.bench.tasks.base import TrainableTask, option
from geoptim.models import ACTIVATIONS, DigitsResNet, DigitsVGG

MODELS = ("resnet", "vgg")


@dataclasses.dataclass
class DigitsTask(TrainableTask):
    name: ClassVar[str] = "digits"
    description: ClassVar[str] = (
        "sklearn 8x8 digits, small ResNet or VGG with BatchNorm (ReLU or leaky ReLU), "
        "mini-batches; train NLL / test top-1 per epoch"
    )

    model: str = option("resnet", choices=MODELS)
    activation: str = option("relu", choices=ACTIVATIONS)
    width: int = option(16, ge=1)
    batch_size: int = option(64, ge=1)

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {"quick": {"epochs": 6}, "full": {"epochs": 30}}

    def _build_model(self) -> nn.Module:
        cls = DigitsResNet if self.model == "resnet" else DigitsVGG
        return cls(self.width, self.activation)

    def make_data(self, seed: int) -> TensorData:
        (x_tr, y_tr), (x_te, y_te) = load_digits_split()
        return TensorData(x_tr, y_tr, x_te, y_te, batch_size=self.batch_size, seed=seed)
