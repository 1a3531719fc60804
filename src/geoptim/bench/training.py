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
* ``p_schedule``: ``"cosine"`` (default, the schedule above) or ``"constant"`` (``p`` stays
  ``p_max`` for the whole run: the fixed-p control arm; ``{"p_max": 2}`` is plain SGD-momentum),
  or one of the two below;
* ``p_schedule="curvature"``: a :class:`geoptim.CurvaturePScheduler` (``p_max`` -> 2, set from the
  measured anisotropy), stepped after every optimizer step; ``p_estimator`` (``"gradient"``, the
  default, or ``"hessian"``, whose closure is the loss of the step's batch, the model in training
  mode), ``p_interval`` and ``p_smoothing`` are its ``estimator``, ``interval`` and
  ``smoothing``. ``extra["p_steps"]`` is the p of every step, ``extra["estimator_s"]`` the
  scheduler's time (inside ``time_s``) and ``extra["estimator_fraction"]`` its cost in training
  steps per step, ``estimator_s / (time_s - estimator_s)``;
* ``p_schedule="shuffled"`` (the control of the adaptive schedule): :func:`train` first replays
  the paired ``"curvature"`` run (the same hyper-parameters otherwise, hence the same initial
  weights and batches) and takes its per-step p values; they are cut into blocks of
  ``p_interval`` steps (the adaptive p changes only between blocks) and the blocks replayed in
  the order of a permutation seeded by the run's seed (:func:`shuffled_blocks`): the same
  multiset of p values in an order unrelated to the curvature measured. It costs two runs (its
  ``time_s`` counts its own steps only);
* ``agr_moments`` (AGR optimizers): passed as the optimizer's ``moments`` keyword (``"both"``:
  every moment sees ``Psi(g)``, the official code; ``"first"``: the AGR paper's prose);
* any other key is an optimizer keyword (``betas``, ``momentum``, ``agr_until``, ``p``, ...).

Optimizer ``"sgdm_rms"`` (the step-size control of LPSGDM, :class:`RMSMatchedSGDM`): SGD-momentum
whose update is rescaled, per tensor and per step, to the RMS of the update LPSGDM made at that
step. It takes LPSGDM's hyper-parameters (``lr``, ``p_max``, ``p_schedule``, ``momentum``,
``weight_decay``, schedules); :func:`train` first replays the paired LPSGDM run (same task, seed,
budget and hyper-parameters, hence the same initial weights and batches) to measure that RMS
(:class:`UpdateRMSRecorder`), so an ``sgdm_rms`` run costs two runs (its ``time_s`` counts its
own steps only). Only the direction differs: LPSGDM steps along ``phi_p(m)``, the control along
``m`` itself.

AGR optimizers (a param group with ``agr_until``): ``extra["agr_relative_change"]`` is the median,
over :data:`AGR_PROBES` steps spread over the steps where AGR is on, of
``||u_AGR - u_plain|| / ||u_plain||`` (all parameters together), where ``u_plain`` is the update
the same optimizer makes from the same state and gradient with AGR switched off for that step
(:func:`step_measuring_agr`; a probe takes two optimizer steps, both inside ``time_s``).

Callbacks are objects with optional methods ``on_train_begin(model, optimizer)``, called once
before the first step, ``on_step(step, model, optimizer, loss)``, called after
every optimizer step (``step`` counts from 1, ``loss`` is the mini-batch loss before the step),
and ``on_epoch_end(epoch, model, optimizer)``, called after every full pass over the training
batches (``epoch`` counts from 1). At an epoch's last step the order is ``on_step``,
``on_epoch_end``, then the checkpoint's evaluation.

A non-finite mini-batch loss stops the run before that step is taken: the model is evaluated once
more (a last checkpoint) and ``extra["diverged"]`` is ``True``. ``curves["time_s"]`` is the
cumulative wall time of the training steps (batch, forward, backward, optimizer, schedulers), not
of evaluations or callbacks. ``curves["lr"]`` and ``curves["p"]`` hold the values in effect for
the steps after each checkpoint.

Mid-run checkpoints (``checkpoint=``, a :class:`geoptim.bench.checkpoints.Checkpoint`: the
model, optimizer, schedulers, data position, RNG state and curves so far, saved at epoch ends)
let a killed run resume and end exactly as if it had never stopped.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geoptim import create_optimizer, param_groups
from geoptim.bench.checkpoints import Checkpoint, CheckpointMismatch
from geoptim.bench.models import count_params
from geoptim.curvature_schedule import DEFAULT_INTERVAL

if TYPE_CHECKING:
    from geoptim.bench.tasks.base import TrainableTask

SCHEDULE_KEYS = (
    "lr",
    "weight_decay",
    "warmup_frac",
    "lr_schedule",
    "p_max",
    "p_schedule",
    "p_estimator",
    "p_interval",
    "p_smoothing",
)
LR_SCHEDULES = ("cosine", "constant")
P_SCHEDULES = ("cosine", "constant", "curvature", "shuffled")
PER_STEP_P = ("curvature", "shuffled")
"""The p schedules stepped after every optimizer step (the others once per checkpoint)."""
BENCH_OPTIMIZERS = ("sgdm_rms",)
"""Optimizers that exist only in the benchmark (built here, not by ``geoptim.create_optimizer``)."""
AGR_PROBES = 8


@dataclass
class OptimizerSetup:
    """An optimizer with its per-step lr scheduler and (LPSGD/LPSGDM with ``p_max``) p scheduler."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    p_scheduler: Any | None
    p_every_step: bool = False

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
    rms_schedule: Sequence[Sequence[float]] | None = None,
    p_replay: Sequence[float] | None = None,
    seed: int = 0,
) -> OptimizerSetup:
    """Build the optimizer ``name`` from ``hparams`` with its schedulers (see module doc);
    ``rms_schedule`` is the per-step per-tensor update RMS an ``"sgdm_rms"`` optimizer follows
    (its hparams are checked by building the LPSGDM optimizer its paired run uses);
    ``p_replay`` the per-step p of a ``"shuffled"`` schedule; ``seed`` seeds the Hessian
    estimator's probes of a ``"curvature"`` schedule."""
    from geoptim import CosinePScheduler, CurvaturePScheduler

    if "lr" not in hparams:
        raise ValueError(f"hparams need 'lr'; got {sorted(hparams)}")
    p_schedule = hparams.get("p_schedule", "cosine")
    if p_schedule not in P_SCHEDULES:
        raise ValueError(f"unknown p_schedule {p_schedule!r}; known: {', '.join(P_SCHEDULES)}")
    if p_schedule in PER_STEP_P and hparams.get("p_max") is None:
        raise ValueError(f"p_schedule {p_schedule!r} needs p_max (LPSGD/LPSGDM)")
    lr, weight_decay = float(hparams["lr"]), float(hparams.get("weight_decay", 0.0))
    kwargs = {k: v for k, v in hparams.items() if k not in SCHEDULE_KEYS}
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])  # JSON round trips turn tuples into lists
    if "agr_moments" in kwargs:
        kwargs["moments"] = kwargs.pop("agr_moments")
    p_max = hparams.get("p_max")
    if name == "sgdm_rms":
        # the paired LPSGDM run takes these hparams: building it checks them the same way
        create_optimizer(model_or_params, "lpsgdm", lr=lr, weight_decay=weight_decay, **kwargs)
        params = (
            param_groups(model_or_params, weight_decay)
            if isinstance(model_or_params, nn.Module)
            else list(model_or_params)
        )
        optimizer: torch.optim.Optimizer = RMSMatchedSGDM(
            params,
            rms_schedule or [],
            lr=lr,
            weight_decay=weight_decay,
            momentum=float(kwargs.get("momentum", 0.9)),
        )
        p_max = None
    else:
        if p_max is not None and p_schedule == "constant":
            kwargs["p"] = float(p_max)
            p_max = None
        optimizer = create_optimizer(
            model_or_params, name, lr=lr, weight_decay=weight_decay, **kwargs
        )
    factor = lr_factor(
        total_steps,
        float(hparams.get("warmup_frac", 0.0)),
        hparams.get("lr_schedule", default_schedule),
    )
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    p_scheduler: Any = None
    if p_max is not None and p_schedule == "curvature":
        p_scheduler = CurvaturePScheduler(
            optimizer,
            float(p_max),
            estimator=hparams.get("p_estimator", "gradient"),
            interval=hparams.get("p_interval"),
            smoothing=float(hparams.get("p_smoothing", 0.0)),
            seed=seed,
        )
    elif p_max is not None and p_schedule == "shuffled":
        p_scheduler = ReplayPScheduler(optimizer, p_replay or [float(p_max)])
    elif p_max is not None:
        p_scheduler = CosinePScheduler(optimizer, float(p_max), T_max=max(p_intervals, 1))
    per_step = p_scheduler is not None and p_schedule in PER_STEP_P
    return OptimizerSetup(optimizer, lr_scheduler, p_scheduler, per_step)


class ReplayPScheduler:
    """Sets every param group's ``p`` to ``values[t]`` for optimizer step ``t`` (counting from 0;
    :meth:`step` after each step); past the end the last value stays."""

    def __init__(self, optimizer: torch.optim.Optimizer, values: Sequence[float]) -> None:
        if not values:
            raise ValueError("a replayed p schedule needs at least one value")
        self.optimizer, self.values, self.last_epoch = optimizer, list(values), 0
        self._apply()

    def _apply(self) -> None:
        p = self.values[min(self.last_epoch, len(self.values) - 1)]
        for group in self.optimizer.param_groups:
            group["p"] = float(p)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._apply()


def shuffled_blocks(values: Sequence[float], block: int, seed: int) -> list[float]:
    """``values`` cut into consecutive blocks of ``block`` (the last may be shorter), the blocks
    in the order of ``torch.randperm`` seeded with ``seed``: a permutation of ``values``."""
    blocks = [list(values[start : start + block]) for start in range(0, len(values), block)]
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    return [value for index in order.tolist() for value in blocks[index]]


class RMSMatchedSGDM(torch.optim.Optimizer):
    r"""SGD-momentum with a prescribed per-tensor step length (the ``"sgdm_rms"`` control).

    At step ``t`` (counting from 0), for the ``i``-th parameter tensor (in param-group order),
    with the EMA momentum of LPSGDM and its decoupled weight decay:

    .. math::

        m = \beta m + (1 - \beta) g, \qquad
        w = w (1 - \eta_t \lambda) - r_{t,i} \, m / \mathrm{rms}(m),

    where ``r = rms_schedule`` (``r[t][i]``, from :class:`UpdateRMSRecorder`) and
    ``rms(m) = sqrt(mean(m^2))``; a tensor with ``m = 0`` only decays. The lr ``eta_t`` enters
    through the weight decay alone. Stepping past the end of the schedule raises ``IndexError``.
    """

    def __init__(
        self,
        params: Any,
        rms_schedule: Sequence[Sequence[float]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.rms_schedule = rms_schedule
        self.steps_taken = 0

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict and ``steps_taken`` (the position in the schedule)."""
        return {**super().state_dict(), "steps_taken": self.steps_taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.steps_taken = int(state_dict.pop("steps_taken"))
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.steps_taken >= len(self.rms_schedule):
            raise IndexError(f"the RMS schedule has only {len(self.rms_schedule)} steps")
        targets = self.rms_schedule[self.steps_taken]
        index = 0
        for group in self.param_groups:
            beta, decay = group["momentum"], group["lr"] * group["weight_decay"]
            for param in group["params"]:
                target, index = float(targets[index]), index + 1
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["step"] = torch.tensor(0.0)
                    state["momentum_buffer"] = torch.zeros_like(param)
                state["step"] += 1
                m = state["momentum_buffer"]
                m.mul_(beta).add_(param.grad, alpha=1.0 - beta)
                param.mul_(1.0 - decay)
                rms = float(m.pow(2).mean().sqrt())
                if rms > 0.0:
                    param.add_(m, alpha=-target / rms)
        self.steps_taken += 1
        return loss


class UpdateRMSRecorder:
    """A callback recording, at every step, each parameter tensor's update RMS without the
    decoupled weight decay: ``rms(w_new - w_old * (1 - lr * wd))`` with the group's ``lr`` and
    ``weight_decay`` of that step (for LPSGDM this is ``lr * rms(phi_p(m))``). ``schedule[t][i]``
    is step ``t``'s value for tensor ``i`` in param-group order."""

    def __init__(self) -> None:
        self.schedule: list[list[float]] = []
        self._before: list[torch.Tensor] = []

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    def _pre(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self._before = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]

    def _post(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        before = iter(self._before)
        row = []
        for group in optimizer.param_groups:
            decay = group["lr"] * group.get("weight_decay", 0.0)
            for param in group["params"]:
                step = param.detach() - next(before) * (1.0 - decay)
                row.append(float(step.pow(2).mean().sqrt()))
        self.schedule.append(row)


def step_measuring_agr(optimizer: torch.optim.Optimizer) -> float:
    """Take ``optimizer``'s step (AGR on) and return ``||u_AGR - u_plain|| / ||u_plain||``, where
    ``u_plain`` is the update of the same step from the same state with AGR off (taken first on the
    same parameters, then undone by restoring the parameters and the optimizer's state)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start = [p.detach().clone() for p in params]
    saved = copy.deepcopy(optimizer.state_dict())
    for group in optimizer.param_groups:
        group["agr_until"] = -1  # AGR applies while agr_step <= agr_until: off for this step
    optimizer.step()
    plain = [p.detach() - w for p, w in zip(params, start, strict=True)]
    with torch.no_grad():
        for p, w in zip(params, start, strict=True):
            p.copy_(w)
    optimizer.load_state_dict(saved)
    optimizer.step()
    with_agr = [p.detach() - w for p, w in zip(params, start, strict=True)]
    diff = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(with_agr, plain, strict=True)))
    norm = math.sqrt(sum(float(b.pow(2).sum()) for b in plain))
    return diff / norm if norm > 0 else 0.0


def agr_probe_steps(optimizer: torch.optim.Optimizer, total: int) -> set[int]:
    """The (1-based) steps at which :func:`step_measuring_agr` measures an AGR optimizer: up to
    :data:`AGR_PROBES` spread evenly over the steps where AGR is on; empty for other optimizers."""
    group = optimizer.param_groups[0]
    if "agr_until" not in group:
        return set()
    active = total if group["agr_until"] is None else min(total, int(group["agr_until"]))
    return {1 + (k * active) // AGR_PROBES for k in range(AGR_PROBES)} if active > 0 else set()


def step_p_scheduler(p_scheduler: Any, closure: Callable[[], torch.Tensor]) -> None:
    """Step a per-step p scheduler; the Hessian estimator gets ``closure`` (the batch's loss)."""
    if getattr(p_scheduler, "estimator", None) == "hessian":
        p_scheduler.step(closure)
    else:
        p_scheduler.step()


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


def paired_run(
    checkpoint: Checkpoint | None, part: str, measure: Callable[[], tuple[list[Any], bool]]
) -> tuple[list[Any], bool]:
    """What a control replays from its paired run (``measure()``: the values and whether that
    run diverged), measured once per run: kept beside the run's checkpoint as part ``part``, so
    a resumed control does not train its paired run again."""
    paired = checkpoint.load_part(part) if checkpoint is not None else None
    if paired is None:
        values, diverged = measure()
        paired = {"values": torch.tensor(values, dtype=torch.float64), "diverged": diverged}
        if checkpoint is not None:
            checkpoint.save_part(part, paired)
    return paired["values"].tolist(), bool(paired["diverged"])


def paired_rms_schedule(
    task: TrainableTask,
    hparams: dict[str, Any],
    seed: int,
    budget: dict[str, Any],
    checkpoint: Checkpoint | None,
) -> tuple[list[list[float]], bool]:
    """The update-RMS schedule an ``sgdm_rms`` run follows (:class:`UpdateRMSRecorder` over its
    paired LPSGDM run) and whether that run diverged (:func:`paired_run`)."""

    def measure() -> tuple[list[list[float]], bool]:
        recorder = UpdateRMSRecorder()
        result = train(task, "lpsgdm", hparams, seed, budget, callbacks=[recorder])
        return recorder.schedule, bool(result["extra"]["diverged"])

    return paired_run(checkpoint, "paired_lpsgdm", measure)


def shuffled_p_schedule(
    task: TrainableTask,
    optimizer_name: str,
    hparams: dict[str, Any],
    seed: int,
    budget: dict[str, Any],
    checkpoint: Checkpoint | None,
) -> tuple[list[float], bool]:
    """The per-step p a ``p_schedule="shuffled"`` run replays: its paired adaptive run's (the
    same hparams with ``"curvature"``) in blocks of ``p_interval`` shuffled by ``seed``
    (:func:`shuffled_blocks`), and whether that run diverged (:func:`paired_run`)."""

    def measure() -> tuple[list[float], bool]:
        adaptive_hparams = {**hparams, "p_schedule": "curvature"}
        adaptive = train(task, optimizer_name, adaptive_hparams, seed, budget)
        return adaptive["extra"]["p_steps"], bool(adaptive["extra"]["diverged"])

    p_steps, diverged = paired_run(checkpoint, "paired_adaptive", measure)
    estimator = hparams.get("p_estimator", "gradient")
    interval = int(hparams.get("p_interval") or DEFAULT_INTERVAL[estimator])
    return shuffled_blocks(p_steps, interval, seed), diverged


def train(
    task: TrainableTask,
    optimizer_name: str,
    hparams: dict[str, Any],
    seed: int,
    budget: dict[str, Any],
    progress: Callable[[float], None] | None = None,
    callbacks: Sequence[Any] = (),
    checkpoint: Checkpoint | None = None,
) -> dict[str, Any]:
    """Train ``task.make_model(seed)`` on ``task.make_data(seed)`` and return the result dict:
    ``curves`` (``step, epoch, lr, [p,] train_loss, train_acc, [val_loss, val_acc,] test_loss,
    test_acc, time_s``), ``final`` (the metrics and ``time_s`` of the last checkpoint), ``steps``
    and ``extra = {"diverged", "num_params", "device", "data_hash"[, "agr_relative_change"]}``.

    Pairing: the model's initial weights depend on ``seed`` alone (``make_model(seed)``), the
    batches on ``seed`` and the epoch (:class:`geoptim.bench.data.TensorData`), so runs of
    different optimizers with the same seed start from the same weights and see the same batches.

    ``checkpoint``: resume from it if it holds a checkpoint of this run, and save to it as
    training goes (:mod:`geoptim.bench.checkpoints`; an ``sgdm_rms`` run keeps the schedule its
    paired LPSGDM run measured beside it, :func:`paired_rms_schedule`).
    """
    rms_schedule = p_replay = None
    paired_diverged = False
    if optimizer_name == "sgdm_rms":
        rms_schedule, paired_diverged = paired_rms_schedule(task, hparams, seed, budget, checkpoint)
    if hparams.get("p_schedule") == "shuffled":
        p_replay, paired_diverged = shuffled_p_schedule(
            task, optimizer_name, hparams, seed, budget, checkpoint
        )
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
    for replayed in (rms_schedule, p_replay):
        if replayed is not None:
            total = min(total, len(replayed))  # a diverged paired run ends the control early
    setup = setup_optimizer(
        model,
        optimizer_name,
        hparams,
        total,
        -(-total // eval_every),
        rms_schedule=rms_schedule,
        p_replay=p_replay,
        seed=seed,
    )
    optimizer = setup.optimizer
    probes = agr_probe_steps(optimizer, total)
    agr_changes: list[float] = []
    curves = Curves()
    train_time = estimator_time = 0.0
    p_steps: list[float] = []
    step, epoch, skip, diverged = 0, 0, 0, False
    try:
        resumed = checkpoint.restore(model, setup) if checkpoint is not None else None
    except CheckpointMismatch:  # the model or optimizer was changed part-way: build them again
        return train(task, optimizer_name, hparams, seed, budget, progress, callbacks, checkpoint)
    if resumed is not None:
        step, epoch, skip = resumed["step"], resumed["epoch"], resumed["batch"]
        curves.data, train_time = resumed["curves"], resumed["train_time"]
        agr_changes, p_steps = resumed["agr_changes"], resumed["p_steps"]
        estimator_time = resumed["estimator_time"]

    def evaluate(step: int) -> None:
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

    if resumed is None:
        evaluate(0)
    call_hooks(callbacks, "on_train_begin", model, optimizer)
    while step < total and not diverged:
        start = time.perf_counter()
        batches = islice(data.train_batches(epoch), skip, steps_per_epoch)
        for i, (x, y) in enumerate(batches, start=skip):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = task.loss_fn(model(x), y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if setup.p_every_step:
                p_steps.append(float(setup.current_p()))
            if step + 1 in probes:
                agr_changes.append(step_measuring_agr(optimizer))
            else:
                optimizer.step()
            setup.lr_scheduler.step()
            step += 1
            due = step % eval_every == 0 or step == total
            if setup.p_every_step:
                tick = time.perf_counter()
                step_p_scheduler(setup.p_scheduler, lambda x=x, y=y: task.loss_fn(model(x), y))
                estimator_time += time.perf_counter() - tick
            elif due and setup.p_scheduler is not None:
                setup.p_scheduler.step()
            train_time += time.perf_counter() - start
            call_hooks(callbacks, "on_step", step, model, optimizer, loss_value)
            if i + 1 == steps_per_epoch:
                call_hooks(callbacks, "on_epoch_end", epoch + 1, model, optimizer)
            if due:
                evaluate(step)
                if progress is not None:
                    progress(step / total)
            if step >= total:
                break
            if checkpoint is not None and checkpoint.due(step, i + 1 == steps_per_epoch):
                next_epoch, next_batch = divmod(epoch * steps_per_epoch + i + 1, steps_per_epoch)
                loop = {"step": step, "epoch": next_epoch, "batch": next_batch}
                loop.update(train_time=train_time, curves=curves.data, agr_changes=agr_changes)
                loop.update(p_steps=p_steps, estimator_time=estimator_time)
                checkpoint.save(model, setup, loop)
            start = time.perf_counter()
        epoch, skip = epoch + 1, 0
    if diverged and curves.data["step"][-1] != step:
        evaluate(step)
    final = {k: v for k, v in curves.last().items() if k not in ("step", "epoch", "lr", "p")}
    extra: dict[str, Any] = {
        "diverged": diverged or paired_diverged,
        "num_params": count_params(model),
        "device": str(device),
        "data_hash": data.data_hash(),
    }
    task.__dict__["_data_hash"] = extra["data_hash"]  # task.data_hash() need not rebuild the data
    if agr_changes:
        extra["agr_relative_change"] = statistics.median(agr_changes)
    if setup.p_every_step:
        extra["p_steps"] = p_steps
    if hparams.get("p_schedule") == "curvature":
        extra["estimator_s"] = round(estimator_time, 6)
        own = train_time - estimator_time
        extra["estimator_fraction"] = estimator_time / own if own > 0 else math.nan
    return {"curves": curves.data, "final": final, "steps": step, "extra": extra}
