"""The benchmark's tasks, by name: ``get_task("grokking", model="transformer")``.

================  ==================================================================================
``quadratic``     2-D anisotropic quadratic: GD vs signGD vs l_p (LPSGD paper, fig. 3)
``grokking``      (a + b) mod 113, full batch, grokking gap (SepNorm paper, fig. 1)
``digits``        sklearn digits, small ResNet / VGG with BatchNorm (momentum tracing)
``mnist1d``       MNIST-1D, 1-D CNN
``vit``           sklearn digits, tiny ViT with 2x2 patches
``ddpm``          DDPM on 2-D toys (sliced W1, MMD) or digits (Fréchet distance)
``charlm``        character-level transformer on stdlib source text, bits per character
``cifar10``       CIFAR-10, ResNet-18 / ResNet-50 / VGG-11 (LPSGD paper, table 1)
``cifar100``      CIFAR-100, same models and ResNet-101 (LPSGD paper, table 2; AGR paper)
``imagenet``      ImageNet-1K folder, ResNet-50/101, VGG-11-BN (LPSGD table 3, SepNorm table 2)
``tinyimagenet``  Tiny-ImageNet folder, ResNet-18/50/101, VGG-11 (AGR paper, table 5)
================  ==================================================================================

Overrides set a task's options (its dataclass fields, e.g. ``model``, ``activation``,
``data_dir``), checked by :func:`geoptim.bench.tasks.base.check_options`: unknown names or values
of the wrong type or out of range raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

from geoptim.bench.tasks.base import SUITES, Task, TaskData, TrainableTask, check_options
from geoptim.bench.tasks.charlm import CharLMTask
from geoptim.bench.tasks.cifar import Cifar100Task, CifarTask
from geoptim.bench.tasks.ddpm import DDPMTask
from geoptim.bench.tasks.digits import DigitsTask
from geoptim.bench.tasks.grokking import GrokkingTask, grokking_gap
from geoptim.bench.tasks.imagenet import ImageNetTask, TinyImageNetTask
from geoptim.bench.tasks.mnist1d import MNIST1DTask
from geoptim.bench.tasks.quadratic import QuadraticTask
from geoptim.bench.tasks.vit import ViTTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        QuadraticTask,
        GrokkingTask,
        DigitsTask,
        MNIST1DTask,
        ViTTask,
        DDPMTask,
        CharLMTask,
        CifarTask,
        Cifar100Task,
        TinyImageNetTask,
        ImageNetTask,
    )
}


def list_tasks() -> list[str]:
    """The registered task names, in registry order (cheapest first)."""
    return list(TASKS)


def get_task(name: str, **overrides: Any) -> Task:
    """The task ``name`` with its options set from ``overrides``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    cls = TASKS[name]
    return cls(**check_options(cls, overrides))


__all__ = [
    "SUITES",
    "TASKS",
    "Task",
    "TaskData",
    "TrainableTask",
    "check_options",
    "get_task",
    "grokking_gap",
    "list_tasks",
]
