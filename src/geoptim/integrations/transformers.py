"""The cosine p schedule under Hugging Face ``Trainer``.

.. code-block:: python

    from geoptim.integrations.transformers import PScheduleCallback

    trainer = Trainer(
        model, args, train_dataset=data,
        optimizers=(geoptim.create_optimizer(model, "lpsgdm", lr=1e-2), None),
        callbacks=[PScheduleCallback(p_max=6.0)],        # p: 6 -> 2 over the epochs
    )
    trainer.train()                                       # or train(resume_from_checkpoint=...)

The callback needs no state of its own: ``p`` lives in the optimizer's param groups, which
``Trainer`` checkpoints, and the schedule's position is the epoch (or step) count that
``Trainer`` restores, so a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from torch.optim import Optimizer
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from geoptim.lp import CosinePScheduler


class PScheduleCallback(TrainerCallback):
    """Runs :class:`geoptim.CosinePScheduler` over ``Trainer``'s optimizer.

    ``interval="epoch"`` steps p at the end of every epoch, ``"step"`` after every optimizer
    step. ``T_max`` defaults to the run's length in that unit (``num_train_epochs`` or
    ``max_steps``), so p reaches ``p_min`` as training ends. The scheduler is built when training
    begins (``Trainer`` creates the optimizer late), at the position a resumed run restored.
    """

    def __init__(
        self,
        p_max: float,
        T_max: int | None = None,
        p_min: float = 2.0,
        interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step', got {interval!r}")
        self.p_max, self.T_max, self.p_min, self.interval = p_max, T_max, p_min, interval
        self.scheduler: CosinePScheduler | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        if optimizer is None:
            raise ValueError("PScheduleCallback: Trainer passed no optimizer to on_train_begin")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # unwrap Accelerate's wrapper
        if self.interval == "step":
            done, length = state.global_step, state.max_steps
        else:  # state.epoch counts fractional epochs; a resumed run restores it
            done, length = (
                math.floor((state.epoch or 0.0) + 1e-9),
                math.ceil(state.num_train_epochs),
            )
        self.scheduler = CosinePScheduler(
            optimizer, self.p_max, self.T_max or length, self.p_min, last_epoch=done - 1
        )

    def on_step_end(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        if self.interval == "step" and self.scheduler is not None:
            self.scheduler.step()

    def on_epoch_end(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        if self.interval == "epoch" and self.scheduler is not None:
            self.scheduler.step()
