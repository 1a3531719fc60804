"""The LPSGD paper's 2-D toy (its section 4.1, figure 3): GD vs signGD vs l_p steepest descent on an
anisotropic quadratic.

``L(w) = 0.5 * w^T A w`` with ``A = diag(lambda_1, lambda_2)`` (the paper works in the Hessian's
eigenbasis; its exact matrices were lost in extraction, so these are the project's choice):

* ``"strong"`` (strongly anisotropic, condition number 100): ``A = diag(1, 0.01)``;
* ``"weak"`` (nearly isotropic): ``A = diag(1, 0.5)``.

Start ``w0 = (0.5, 2.0)`` (far along the flat direction), no weight decay, float64, constant lr by
default (``lr_schedule`` ``"constant"``, unlike the classification tasks). Optimizers: ``sgd``
(GD: each coordinate contracts by ``|1 - lr * lambda_i|`` per step), ``signsgd``, and ``lpsgd``
with a fixed ``p`` (``hparams["p"]``, passed to the optimizer) or a cosine ``p_max`` schedule
(stepped every step over the whole budget); any registered optimizer runs.

Expected picture (numpy check, best lr per method, target ``1e-3 * L(w0)``): on ``"strong"`` GD
needs ~130 steps (lr is capped by ``2 / lambda_1``), l_p with p = 4 / 8 ~80 / ~65; on ``"weak"``
GD needs 4 while sign-like steps oscillate around the minimum unless the lr is small.

``run`` records the loss and the trajectory at every step, and ``extra``:
``trajectory`` (``[[x, y], ...]`` from ``w0``), ``steps_to_target`` (first step with
``L <= target_loss``, 0 if ``w0`` already is; ``None`` if never), ``target_loss``
(``target_frac * L(w0)``), ``problem``, ``diverged`` and ``data_hash`` (of ``A`` and ``w0``).
The budget ``{"steps": n}`` may also name the ``problem``, overriding the task option. There is no
data, hence no validation or test split: tuning reads the training loss.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from geoptim.bench.data import tensors_hash
from geoptim.bench.tasks.base import Task, check_choice, option
from geoptim.bench.training import call_hooks, setup_optimizer

PROBLEMS: dict[str, tuple[float, float]] = {"strong": (1.0, 0.01), "weak": (1.0, 0.5)}


def quadratic_loss(w: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum_i lambda_i w_i^2``."""
    return 0.5 * (eigenvalues * w * w).sum()


@dataclasses.dataclass
class QuadraticTask(Task):
    name: ClassVar[str] = "quadratic"
    description: ClassVar[str] = (
        "2-D quadratic, strongly (diag(1, 0.01)) or weakly (diag(1, 0.5)) anisotropic: "
        "trajectory and steps to reach a target loss (GD vs signGD vs l_p)"
    )

    TUNING_METRIC: ClassVar[str] = "-train_loss"
    STEP_SECONDS: ClassVar[float] = 2e-4

    problem: str = option("strong", choices=tuple(PROBLEMS))
    w0: tuple[float, float] = (0.5, 2.0)
    target_frac: float = option(1e-3, gt=0)

    def __post_init__(self) -> None:
        self.w0 = (float(self.w0[0]), float(self.w0[1]))

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {"quick": {"steps": 200}, "full": {"steps": 2000}}

    def data_hash(self, problem: str | None = None) -> str:
        eigenvalues = torch.tensor(PROBLEMS[problem or self.problem], dtype=torch.float64)
        return tensors_hash({"A": eigenvalues, "w0": torch.tensor(self.w0, dtype=torch.float64)})

    def run(
        self,
        optimizer: str,
        hparams: dict[str, Any],
        seed: int,
        budget: dict[str, Any],
        progress: Callable[[float], None] | None = None,
        callbacks: Sequence[Any] = (),
    ) -> dict[str, Any]:
        """Deterministic (``seed`` is only set for optimizers that might draw random numbers).
        Callbacks get ``on_step(step, model, optimizer, loss)`` with ``model`` a module whose one
        parameter ``w`` is the point and ``loss`` its value before the step; there are no epochs."""
        if optimizer == "sgdm_rms":
            raise ValueError("sgdm_rms (the LPSGDM step-size control) runs on trainable tasks only")
        torch.manual_seed(seed)
        problem = budget.get("problem", self.problem)
        check_choice("problem", problem, tuple(PROBLEMS))
        steps = int(budget["steps"])
        if steps < 1:
            raise ValueError(f"budget steps must be >= 1, got {steps}")
        eigenvalues = torch.tensor(PROBLEMS[problem], dtype=torch.float64)
        model = nn.Module()
        model.w = nn.Parameter(torch.tensor(self.w0, dtype=torch.float64))
        w = model.w
        setup = setup_optimizer([w], optimizer, hparams, steps, steps, default_schedule="constant")

        with torch.no_grad():
            loss0 = float(quadratic_loss(w, eigenvalues))
        target = self.target_frac * loss0
        losses, trajectory, times = [loss0], [list(self.w0)], [0.0]
        reached: int | None = 0 if loss0 <= target else None
        elapsed, diverged = 0.0, False
        for step in range(1, steps + 1):
            start = time.perf_counter()
            setup.optimizer.zero_grad(set_to_none=True)
            before = quadratic_loss(w, eigenvalues)
            before.backward()
            setup.optimizer.step()
            setup.lr_scheduler.step()
            if setup.p_scheduler is not None:
                setup.p_scheduler.step()
            with torch.no_grad():
                loss = float(quadratic_loss(w, eigenvalues))
            elapsed += time.perf_counter() - start
            if not math.isfinite(loss):
                diverged = True
                break
            losses.append(loss)
            trajectory.append(w.detach().tolist())
            times.append(round(elapsed, 6))
            if reached is None and loss <= target:
                reached = step
            call_hooks(callbacks, "on_step", step, model, setup.optimizer, before.item())
            if progress is not None and (step % 50 == 0 or step == steps):
                progress(step / steps)

        done = len(losses) - 1
        return {
            "curves": {"step": list(range(done + 1)), "train_loss": losses, "time_s": times},
            "final": {"train_loss": losses[-1], "min_train_loss": min(losses), "time_s": times[-1]},
            "steps": done,
            "extra": {
                "trajectory": trajectory,
                "steps_to_target": reached,
                "target_loss": target,
                "problem": problem,
                "diverged": diverged,
                "data_hash": self.data_hash(problem),
            },
        }
