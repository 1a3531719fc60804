"""geoptim: geometry-aware optimizers for PyTorch.

LPSGD/LPSGDM (l_p steepest descent, cosine p schedule), Lion, SepNorm, OrtSepNorm, NormSGD,
Signum/signSGD, Adan, and AGR in front of any optimizer. SGD-momentum and AdamW are
``torch.optim``'s own, available through :func:`create_optimizer`.

``import geoptim`` loads the optimizers and the registry, which need torch only. The
sub-packages ``geoptim.analysis``, ``geoptim.bench``, ``geoptim.distributed`` and
``geoptim.integrations`` load on first use (``geoptim.analysis.hessian_trace`` works after a
plain ``import geoptim``); ``bench`` and the plots need the ``bench`` / ``analysis`` extras.
"""

import importlib
from types import ModuleType

from geoptim.adan import Adan
from geoptim.agr import AdamWAGR, AdanAGR, agr, with_agr
from geoptim.curvature_schedule import CurvaturePScheduler
from geoptim.lion import Lion, NormSGD, OrtSepNorm, SepNorm, Signum
from geoptim.lp import LPSGD, LPSGDM, CosinePScheduler
from geoptim.registry import (
    create_optimizer,
    get_optimizer_class,
    list_optimizers,
    param_groups,
    register_optimizer,
)

__all__ = [
    "LPSGD",
    "LPSGDM",
    "AdamWAGR",
    "Adan",
    "AdanAGR",
    "CosinePScheduler",
    "CurvaturePScheduler",
    "Lion",
    "NormSGD",
    "OrtSepNorm",
    "SepNorm",
    "Signum",
    "agr",
    "create_optimizer",
    "get_optimizer_class",
    "list_optimizers",
    "param_groups",
    "register_optimizer",
    "with_agr",
]
__version__ = "0.1.0"

_LAZY_SUBPACKAGES = frozenset({"analysis", "bench", "distributed", "integrations"})


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"geoptim.{name}")
    raise AttributeError(f"module 'geoptim' has no attribute {name!r}")
