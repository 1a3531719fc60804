"""The shared training loop of the classification tasks, and the optimizer set-up every task uses.

Budget: ``{"epochs": E}`` (a checkpoint after every epoch) or ``{"steps": S, "eval_every": k}`` (a
checkpoint every ``k`` steps and after the last one; ``k`` defaults to one epoch). Optional
``"batches_per_epoch": n`` caps an epoch at its first ``n`` mini-batches (for smoke runs). There is
always a checkpoint at step 0, before training.

Hyper-parameters (``hparams``):

* ``lr`` (required), ``weight_decay`` (default 0): passed to ``create_optimizer``;
* ``warmup_frac`` (default 0): the learning rate rises linearly over the first
  ``W = round(warmup_frac * S)`` of the ``S`` steps, ``lr * (s + 1) / W`` at step ``s``;
* ``lr_schedule``: ``"cosine"`` (the default of :func:`train`) multiplies the lr after warmup by
  ``(1 + cos(pi * (s - W) / (S - W))) / 2``; ``"constant"`` keeps it;
* ``p_max``: a :class:`geoptim.CosinePScheduler` (``p_max`` -> 2) over the ``T`` checkpoints after
  step 0 (``T`` = epochs for epoch budgets), stepped once per checkpoint; LPSGD/LPSGDM only;
* any other key is an optimizer keyword (``betas``, ``momentum``, ``agr_until``, ``p``, ...).

Callbacks are objects with optional methods ``on_step(step, model, optimizer, loss)``, called after
every optimizer step (``step`` counts from 1, ``loss`` is the mini-batch loss before the step),
and ``on_epoch_end(epoch, model, optimizer)``, called after every full pass over the training
batches (``epoch`` counts from 1). At an epoch's last step the order is ``on_step``,
``on_epoch_end``, then the checkpoint's evaluation.

A non-finite mini-batch loss stops the run before that step is taken: the model is evaluated once
more (a last checkpoint) and ``extra["diverged"]`` is ``True``. ``curves["time_s"]`` is the
cumulative wall time of the training steps (batch, forward, backward, optimizer, schedulers), not
of evaluations or callbacks. ``curves["lr"]`` and ``curves["p"]`` hold the values in effect for
the steps after each checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geoptim import create_optimizer
from geoptim.models import count_params

if TYPE_CHECKING:
    from geoptim.bench.tasks.base import TrainableTask

SCHEDULE_KEYS = ("lr", "weight_decay", "warmup_frac", "lr_schedule", "p_max")
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class OptimizerSetup:
    """An optimizer with its per-step lr scheduler and (LPSGD/LPSGDM with ``p_max``) p scheduler."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    p_scheduler: Any | None

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def current_p(self) -> float | None:
        p = self.optimizer.param_groups[0].get("p")
        return None if p is None else float(p)


def lr_factor(total_steps: int, warmup_frac: float, schedule: str) -> Callable[[int], float]:
    """The multiplier of the base lr at step ``s = 0 .. total_steps - 1`` (see module doc)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    if not 0.0 <= warmup_frac < 1.0:
        raise ValueError(f"warmup_frac must lie in [0, 1), got {warmup_frac}")
    warmup = round(warmup_frac * total_steps)

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (s - warmup) / max(total_steps - warmup, 1)))

    return factor


def setup_optimizer(
    model_or_params: nn.Module | Sequence[torch.Tensor],
    name: str,
    hparams: dict[str, Any],
    total_steps: int,
    p_intervals: int,
    default_schedule: str = "cosine",
) -> OptimizerSetup:
    """Build the optimizer ``name`` from ``hparams`` with its schedulers (see module doc)."""
    from geoptim import CosinePScheduler

    if "lr" not in hparams:
        raise ValueError(f"hparams need 'lr'; got {sorted(hparams)}")
    kwargs = {k: v for k, v in hparams.items() if k not in SCHEDULE_KEYS}
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])  # JSON round trips turn tuples into lists
    optimizer = create_optimizer(
        model_or_params,
        name,
        lr=float(hparams["lr"]),
        weight_decay=float(hparams.get("weight_decay", 0.0)),
        **kwargs,
    )
    factor = lr_factor(
        total_steps,
        float(hparams.get("warmup_frac", 0.0)),
        hparams.get("lr_schedule", default_schedule),
    )
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    p_scheduler = None
    if hparams.get("p_max") is not None:
        p_scheduler = CosinePScheduler(
            optimizer, float(hparams["p_max"]), T_max=max(p_intervals, 1)
        )
    return OptimizerSetup(optimizer, lr_scheduler, p_scheduler)


def budget_steps(budget: dict[str, Any], steps_per_epoch: int) -> tuple[int, int]:
    """``(total_steps, eval_every)`` of a budget, given the batches per epoch."""
    if "epochs" in budget and "steps" in budget:
        raise ValueError(f"a budget has 'epochs' or 'steps', not both: {budget}")
    if "epochs" in budget:
        epochs = int(budget["epochs"])
        if epochs < 1:
            raise ValueError(f"budget epochs must be >= 1, got {epochs}")
        return epochs * steps_per_epoch, steps_per_epoch
    if "steps" in budget:
        steps = int(budget["steps"])
        eval_every = int(budget.get("eval_every", steps_per_epoch))
        if steps < 1 or eval_every < 1:
            raise ValueError(f"budget steps and eval_every must be >= 1: {budget}")
        return steps, eval_every
    raise ValueError(f"a budget needs 'epochs' or 'steps', got {budget}")


class Curves:
    """Checkpoint lists aligned by index; ``add`` appends one checkpoint."""

    def __init__(self) -> None:
        self.data: dict[str, list[Any]] = {}

    def add(self, **values: Any) -> None:
        for key, value in values.items():
            if value is not None:
                self.data.setdefault(key, []).append(value)

    def last(self) -> dict[str, Any]:
        return {key: values[-1] for key, values in self.data.items()}


def call_hooks(callbacks: Sequence[Any], method: str, *args: Any) -> None:
    """Call ``method(*args)`` on every callback that has it."""
    for callback in callbacks:
        hook = getattr(callback, method, None)
        if hook is not None:
            hook(*args)


def train(
    task: TrainableTask,
    optimizer_name: str,
    hparams: dict[str, Any],
    seed: int,
    budget: dict[str, Any],
    progress: Callable[[float], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``task.make_model(seed)`` on ``task.make_data(seed)`` and return the result dict:
    ``curves`` (``step, epoch, lr, [p,] train_loss, train_acc, test_loss, test_acc, time_s``),
    ``final`` (the metrics and ``time_s`` of the last checkpoint), ``steps`` and
    ``extra = {"diverged", "num_params", "device"}``."""
    torch.manual_seed(seed)
    device = task.torch_device()
    data = task.make_data(seed)
    if hasattr(data, "to"):
        data.to(device)  # CIFAR on the GPU: index and augment batches there
    model = task.make_model(seed).to(device)
    model.train()
    steps_per_epoch = data.steps_per_epoch
    if budget.get("batches_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(budget["batches_per_epoch"]))
    total, eval_every = budget_steps(budget, steps_per_epoch)
    setup = setup_optimizer(model, optimizer_name, hparams, total, -(-total // eval_every))
    optimizer = setup.optimizer
    curves = Curves()
    train_time = 0.0

    def checkpoint(step: int) -> None:
        epoch = step / steps_per_epoch
        metrics = data.evaluate(model)
        curves.add(
            step=step,
            epoch=int(epoch) if epoch.is_integer() else round(epoch, 6),
            lr=setup.current_lr(),
            p=setup.current_p(),
            **metrics,
            time_s=round(train_time, 6),
        )

    checkpoint(0)
    step, epoch, diverged = 0, 0, False
    while step < total and not diverged:
        start = time.perf_counter()
        for i, (x, y) in enumerate(islice(data.train_batches(epoch), steps_per_epoch)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = task.loss_fn(model(x), y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            setup.lr_scheduler.step()
            step += 1
            due = step % eval_every == 0 or step == total
            if due and setup.p_scheduler is not None:
                setup.p_scheduler.step()
            train_time += time.perf_counter() - start
            call_hooks(callbacks, "on_step", step, model, optimizer, loss_value)
            if i + 1 == steps_per_epoch:
                call_hooks(callbacks, "on_epoch_end", epoch + 1, model, optimizer)
            if due:
                checkpoint(step)
                if progress is not None:
                    progress(step / total)
            if step >= total:
                break
            start = time.perf_counter()
        epoch += 1
    if diverged and curves.data["step"][-1] != step:
        checkpoint(step)
    final = {k: v for k, v in curves.last().items() if k not in ("step", "epoch", "lr", "p")}
    return {
        "curves": curves.data,
        "final": final,
        "steps": step,
        "extra": {
            "diverged": diverged,
            "num_params": count_params(model),
            "device": str(device),
        },
    }
