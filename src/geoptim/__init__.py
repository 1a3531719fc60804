"""geoptim: geometry-aware optimizers for PyTorch.

LPSGD/LPSGDM (l_p steepest descent, cosine p schedule), Lion, SepNorm, OrtSepNorm, NormSGD,
Signum/signSGD, Adan, and AGR in front of any optimizer. SGD-momentum and AdamW are
``torch.optim``'s own, available through :func:`create_optimizer`.
"""

from geoptim.adan import Adan
from geoptim.agr import AdamWAGR, AdanAGR, agr, with_agr
from geoptim.curvature_schedule import CurvaturePScheduler
from geoptim.lion import Lion, NormSGD, OrtSepNorm, SepNorm, Signum
from geoptim.lp import LPSGD, LPSGDM, CosinePScheduler
from geoptim.registry import create_optimizer, list_optimizers, param_groups

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
    "list_optimizers",
    "param_groups",
    "with_agr",
]
__version__ = "0.1.0"
