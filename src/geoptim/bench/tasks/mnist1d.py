"""MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40, generated locally.

The ``mnist1d`` package's procedural generator with its default arguments (5000 samples, 4000
train / 1000 test) and seed ``data_seed`` (42, the package default) -- never its download path;
cached in memory per process (:func:`geoptim.bench.data.load_mnist1d`; generating takes a few
seconds). Model: :class:`geoptim.bench.models.MNIST1DCNN` (three conv layers, ``channels`` wide);
mini-batches of ``batch_size`` (100); after every epoch the NLL and top-1 on the first
``eval_train_size`` (1000) training signals, the validation split (the last ``n_val`` = 500 of the
generator's 4000 training signals) and the 1000 test signals.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from geoptim.bench.data import TensorData, load_mnist1d
from geoptim.bench.models import MNIST1DCNN
from geoptim.bench.tasks.base import TrainableTask, option


@dataclasses.dataclass
class MNIST1DTask(TrainableTask):
    name: ClassVar[str] = "mnist1d"
    STEP_SECONDS: ClassVar[float] = 4.4e-3
    EVAL_SECONDS: ClassVar[float] = 0.05  # with eval_train_size 1000
    description: ClassVar[str] = (
        "MNIST-1D (procedurally generated, 4000/1000 signals of length 40), 1-D CNN, "
        "mini-batches; train NLL / test top-1 per epoch"
    )

    channels: int = option(32, ge=1)
    batch_size: int = option(100, ge=1)
    num_samples: int = option(5000, ge=10)
    data_seed: int = 42
    n_val: int = 500
    eval_train_size: int = 1000

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {"quick": {"epochs": 20}, "full": {"epochs": 60}}

    def _build_model(self) -> nn.Module:
        return MNIST1DCNN(self.channels)

    def make_data(self, seed: int) -> TensorData:
        splits = load_mnist1d(self.num_samples, self.data_seed, self.n_val)
        return TensorData.from_splits(
            splits, batch_size=self.batch_size, seed=seed, eval_train_size=self.eval_train_size
        )
