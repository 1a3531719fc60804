"""Denoising diffusion (DDPM, Ho et al. 2020) on 2-D toy distributions and on 8x8 digits (analog of
the AGR paper's CIFAR-10 DDPM and its "stop AGR late" ablation, at CPU scale).

Forward process: the linear schedule of Ho et al. (``beta`` from ``1e-4`` to ``0.02`` over 1000
steps) rescaled to ``T`` steps, ``beta_t = (1000 / T) * linspace(1e-4, 0.02, T)[t]``,
``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` and

.. math::

    x_t = \\sqrt{\\bar\\alpha_t}\\, x_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\varepsilon,
    \\qquad \\varepsilon \\sim N(0, I), \\quad t \\in \\{0, \\dots, T - 1\\}.

Training minimises ``|eps_theta(x_t, t) - eps|^2`` (epsilon prediction, mean over batch and
coordinates) with ``t`` uniform. Sampling is ancestral with ``sigma_t^2 = beta_t``:
``x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(1 - beta_t) + sigma_t z``
(no noise at the last step).

The hook into the shared training loop: a mini-batch is ``(inputs, eps)`` with
``inputs = [x_t, t]`` (the time step appended as a last column, see :func:`pack`), the model is
the denoiser of ``inputs`` and ``loss_fn`` the mean squared error -- so the loop, the optimizers'
hyper-parameters (``agr_until`` included: "stop AGR late" is ``agr_until`` = a late step) and the
callbacks work unchanged. ``t`` and ``eps`` are drawn per epoch from a generator seeded by run
seed and epoch, so every optimizer of a seed sees the same noisy batches.

Data (option ``dataset``), fixed for every seed (``data_seed``):

* ``"moons"``: ``make_moons(noise=0.05)``; ``"swiss_roll"``: ``make_swiss_roll(noise=0.5)``
  projected to its first and third coordinates (the spiral). ``n_train`` points for training and
  ``n_eval`` each for validation and test, standardised per coordinate with the training
  statistics. Metrics, of ``n_eval`` generated samples against each held-out split: the sliced
  1-Wasserstein distance (:func:`sliced_wasserstein`, ``n_projections`` random directions) and
  the squared MMD with a Gaussian kernel (:func:`mmd2`, bandwidth ``mmd_bandwidth``).
* ``"digits"``: ``sklearn``'s 8x8 digits as 64-vectors in ``[-1, 1]`` (:func:`digits_pixels`:
  the split sizes and seed of :func:`geoptim.bench.data.load_digits_split`). Metric: the Fréchet
  distance (:func:`frechet_distance`) between ``n_eval`` generated samples and each held-out
  split in the 64-d penultimate-layer features of a small classifier the task trains itself on
  the training split (:func:`digits_features`, seeded by ``feature_seed``, the same for every
  run, cached per process).

Every checkpoint also reports the denoising loss on each split (``*_loss``; fixed noise, the
first ``n_eval`` training points). The generated samples use a fixed generator
(``sample_seed``), so checkpoints and optimizers are compared on the same noise. Extras give the
floor of each metric: its value between the training and test data.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from geoptim.bench.data import DIGITS_TEST_SIZE, DIGITS_VAL_SIZE, tensors_hash
from geoptim.bench.tasks.base import TrainableTask, option

DATASETS = ("moons", "swiss_roll", "digits")
Batch = tuple[torch.Tensor, torch.Tensor]
NOISE_SEED = 12345  # the fixed noise of the evaluation losses


# --------------------------------------------------------------------------------------------
# Diffusion


def linear_betas(steps: int) -> torch.Tensor:
    """Ho et al.'s linear schedule rescaled to ``steps`` steps (float64; see module doc). Its last
    beta is ``20 / steps``, so it needs more than 20 steps."""
    if steps <= 20:
        raise ValueError(f"the rescaled linear schedule needs more than 20 steps, got {steps}")
    scale = 1000.0 / steps
    return torch.linspace(1e-4 * scale, 0.02 * scale, steps, dtype=torch.float64)


def pack(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The denoiser's input ``[x, t]``: ``x`` (``N x D``) with the time steps as column ``D``."""
    return torch.cat([x, t.to(x.dtype)[:, None]], dim=1)


def noisy_batch(x0: torch.Tensor, betas: torch.Tensor, gen: torch.Generator) -> Batch:
    """``(pack(x_t, t), eps)`` with ``t`` uniform and ``eps ~ N(0, I)`` drawn from ``gen``."""
    alpha_bar = torch.cumprod(1.0 - betas, 0).to(x0)
    t = torch.randint(len(betas), (len(x0),), generator=gen)
    eps = torch.randn(x0.shape, generator=gen).to(x0)
    t = t.to(x0.device)
    a = alpha_bar[t][:, None]
    return pack(a.sqrt() * x0 + (1.0 - a).sqrt() * eps, t), eps


@torch.no_grad()
def sample(
    model: nn.Module, n: int, dim: int, betas: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """``n`` ancestral samples of the reverse process (see module doc); noise from ``gen``."""
    device = next(model.parameters()).device
    alpha_bar = torch.cumprod(1.0 - betas, 0)
    x = torch.randn(n, dim, generator=gen).to(device)
    for t in reversed(range(len(betas))):
        eps = model(pack(x, torch.full((n,), t, device=device))).float()
        beta, a = float(betas[t]), float(alpha_bar[t])
        x = (x - beta / math.sqrt(1.0 - a) * eps) / math.sqrt(1.0 - beta)
        if t > 0:
            x = x + math.sqrt(beta) * torch.randn(n, dim, generator=gen).to(device)
    return x


def time_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[sin(t w_k), cos(t w_k)]``, ``w_k = max_period^(-k / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t[:, None].float() * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """``eps_theta``: an MLP of ``[x, time_embedding(t)]`` with ``n_layers`` SiLU hidden layers of
    ``width`` units. Input :func:`pack` ``(x, t)`` (``N x (D + 1)``), output ``N x D``.
    Parameters: ``(D + E + 1) w + (n_layers - 1)(w + 1) w + (w + 1) D`` (``E = time_dim``)."""

    def __init__(self, dim: int, width: int = 128, n_layers: int = 3, time_dim: int = 32) -> None:
        super().__init__()
        self.time_dim = time_dim
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, width), nn.SiLU()]
        for _ in range(n_layers - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x, t = inputs[:, :-1], inputs[:, -1]
        return self.net(torch.cat([x, time_embedding(t, self.time_dim)], dim=1))


# --------------------------------------------------------------------------------------------
# Metrics


def random_directions(n: int, dim: int, seed: int) -> torch.Tensor:
    """``n`` directions uniform on the unit sphere of ``R^dim`` (rows, float64)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """Sliced 1-Wasserstein distance of two equally large samples (``N x D`` each):
    ``mean_k W1(<a, theta_k>, <b, theta_k>)``, where the 1-D ``W1`` of two samples of equal size
    is the mean absolute difference of their sorted values."""
    if len(a) != len(b):
        raise ValueError(f"sliced_wasserstein needs equally many samples, got {len(a)}, {len(b)}")
    pa = (a.double().cpu() @ directions.T).sort(dim=0).values
    pb = (b.double().cpu() @ directions.T).sort(dim=0).values
    return float((pa - pb).abs().mean())


def mmd2(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> float:
    """Squared maximum mean discrepancy, biased (V-statistic) estimate, Gaussian kernel
    ``k(x, y) = exp(-|x - y|^2 / (2 h^2))``: ``mean k(a, a) + mean k(b, b) - 2 mean k(a, b)``
    (zero for identical samples)."""
    a, b = a.double().cpu(), b.double().cpu()

    def mean_kernel(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(torch.exp(-torch.cdist(x, y).square() / (2.0 * bandwidth**2)).mean())

    return mean_kernel(a, a) + mean_kernel(b, b) - 2.0 * mean_kernel(a, b)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of the rows of ``features``, float64."""
    x = features.double().cpu()
    return x.mean(0), torch.cov(x.T)


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """Fréchet (2-Wasserstein squared) distance of two Gaussians,
    ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``, by symmetric eigen-
    decompositions (negative rounding-error eigenvalues are clipped to zero)."""
    vals, vecs = torch.linalg.eigh(cov1.double())
    root1 = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root1 @ cov2.double() @ root1).clamp(min=0).sqrt().sum()
    mean_term = (mu1.double() - mu2.double()).square().sum()
    return float(mean_term + torch.trace(cov1.double()) + torch.trace(cov2.double()) - 2 * cross)


def sample_frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to the rows of ``a`` and ``b``."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# --------------------------------------------------------------------------------------------
# Data


def toy_points(dataset: str, n: int, seed: int) -> torch.Tensor:
    """``n`` points of a 2-D toy distribution (float32, un-normalised)."""
    from sklearn.datasets import make_moons, make_swiss_roll

    if dataset == "moons":
        x, _ = make_moons(n, noise=0.05, random_state=seed)
    elif dataset == "swiss_roll":
        x = make_swiss_roll(n, noise=0.5, random_state=seed)[0][:, [0, 2]]
    else:
        raise ValueError(f"unknown toy dataset {dataset!r}; known: moons, swiss_roll")
    return torch.from_numpy(np.asarray(x)).float()


def toy_splits(dataset: str, n_train: int, n_eval: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``(train, val, test)``: ``n_train``, ``n_eval``, ``n_eval`` points of one draw, standardised
    per coordinate with the training mean and std."""
    x = toy_points(dataset, n_train + 2 * n_eval, seed)
    train = x[:n_train]
    x = (x - train.mean(0)) / train.std(0)
    return x[:n_train], x[n_train : n_train + n_eval], x[n_train + n_eval :]


def digits_pixels(split_seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """``sklearn`` digits as 64-vectors scaled from ``0 .. 16`` to ``[-1, 1]`` with their labels:
    ``(train, val, test)`` of 1047 / 300 / 450 images, stratified (``random_state=split_seed``),
    the same images as :func:`geoptim.bench.data.load_digits_split`'s splits. Not standardised
    per pixel: nearly constant border pixels would become huge outliers."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.data / 8.0 - 1.0, digits.target
    x_rest, x_te, y_rest, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_SIZE, stratify=y, random_state=split_seed
    )
    x_tr, x_va, y_tr, y_va = train_test_split(
        x_rest, y_rest, test_size=DIGITS_VAL_SIZE, stratify=y_rest, random_state=split_seed
    )

    def prep(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(images).float(), torch.from_numpy(labels).long()

    return prep(x_tr, y_tr), prep(x_va, y_va), prep(x_te, y_te)


class FeatureNet(nn.Module):
    """The digits classifier whose hidden features the Fréchet distance uses: 64 -> 128 -> 64
    (ReLU each; the features) -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@functools.lru_cache(maxsize=2)
def digits_features(seed: int = 0, steps: int = 300) -> tuple[FeatureNet, float]:
    """A :class:`FeatureNet` trained full-batch (Adam, lr 1e-2, ``steps`` steps, weight decay
    1e-4) on the training split of :func:`digits_pixels` from ``torch.manual_seed(seed)`` (the
    global RNG is restored afterwards), frozen, and its test accuracy."""
    (x_train, y_train), _, (x_test, y_test) = digits_pixels()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(net(x_train), y_train).backward()
            optimizer.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = float((net(x_test).argmax(1) == y_test).float().mean())
    return net, accuracy


class DiffusionData:
    """Train / validation / test samples (``N x D``) with the ``TaskData`` interface for the
    diffusion objective (see module doc). ``features`` maps samples to the Fréchet feature space
    (``None``: sliced Wasserstein and MMD in data space)."""

    def __init__(
        self,
        train: torch.Tensor,
        val: torch.Tensor,
        test: torch.Tensor,
        *,
        betas: torch.Tensor,
        batch_size: int,
        seed: int,
        n_eval: int,
        sample_seed: int,
        n_projections: int = 256,
        mmd_bandwidth: float = 0.5,
        features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.splits = {"train": train, "val": val, "test": test}
        self.betas, self.batch_size, self.seed = betas, batch_size, seed
        self.n_eval, self.sample_seed = n_eval, sample_seed
        self.directions = random_directions(n_projections, train.shape[1], seed=0)
        self.mmd_bandwidth, self.features = mmd_bandwidth, features

    def to(self, device: torch.device) -> DiffusionData:
        self.splits = {name: x.to(device) for name, x in self.splits.items()}
        return self

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.splits["train"]) // self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        train = self.splits["train"]
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), self.batch_size):
            x0 = train[order[start : start + self.batch_size].to(train.device)]
            yield noisy_batch(x0, self.betas, gen)

    def fixed_noisy_batch(self, x0: torch.Tensor) -> Batch:
        """:func:`noisy_batch` of ``x0`` with the fixed evaluation noise (:data:`NOISE_SEED`)."""
        return noisy_batch(x0, self.betas, torch.Generator().manual_seed(NOISE_SEED))

    def hessian_batch(self, n: int) -> Batch:
        """The first ``n`` training points with the fixed noise: the same batch every call."""
        return self.fixed_noisy_batch(self.splits["train"][:n])

    def data_hash(self) -> str:
        """:func:`geoptim.bench.data.tensors_hash` of the three splits and the noise schedule."""
        return tensors_hash({**self.splits, "betas": self.betas})

    def distances(self, samples: torch.Tensor, split: str) -> dict[str, float]:
        """The metrics of ``samples`` against held-out ``split`` (keys without the split name)."""
        reference = self.splits[split]
        if self.features is not None:
            return {"fd": sample_frechet(self.features(samples), self.features(reference))}
        return {
            "swd": sliced_wasserstein(samples, reference, self.directions),
            "mmd2": mmd2(samples, reference, self.mmd_bandwidth),
        }

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        metrics = {}
        for name, x in self.splits.items():
            inputs, eps = self.fixed_noisy_batch(x[: self.n_eval])
            metrics[f"{name}_loss"] = F.mse_loss(model(inputs).float(), eps).item()
        dim = self.splits["train"].shape[1]
        gen = torch.Generator().manual_seed(self.sample_seed)
        samples = sample(model, self.n_eval, dim, self.betas, gen).cpu()
        for split in ("val", "test"):
            for key, value in self.distances(samples, split).items():
                metrics[f"{split}_{key}"] = value
        model.train(was_training)
        return metrics


# --------------------------------------------------------------------------------------------
# Task


@dataclasses.dataclass
class DDPMTask(TrainableTask):
    name: ClassVar[str] = "ddpm"
    STEP_SECONDS: ClassVar[float] = 0.0035  # moons; swiss roll the same, digits 0.0046
    EVAL_SECONDS: ClassVar[float] = 1.0  # sampling dominates; digits 1.3
    TUNING_METRIC: ClassVar[str] = "-val_loss"  # the validation denoising loss
    description: ClassVar[str] = (
        "DDPM (linear betas, epsilon prediction, T = 100) with an MLP denoiser on 2-D moons / "
        "swiss roll or 8x8 digits; sliced Wasserstein and MMD (2-D) or Fréchet distance (digits)"
    )

    dataset: str = option("moons", choices=DATASETS)
    diffusion_steps: int = option(100, gt=20)  # the rescaled schedule needs more than 20
    width: int | None = option(None, ge=1)  # None: 128 for 2-D data, 256 for digits
    n_layers: int = option(3, ge=1)
    time_dim: int = option(32, ge=2)
    batch_size: int = option(256, ge=1)
    n_train: int = option(4000, ge=2)  # 2-D only
    n_eval: int = option(2000, ge=2)  # 2-D: points per held-out split and samples; digits: samples
    data_seed: int = option(0, ge=0)
    sample_seed: int = option(0, ge=0)
    feature_seed: int = option(0, ge=0)
    n_projections: int = option(256, ge=1)
    mmd_bandwidth: float = option(0.5, gt=0)

    def __post_init__(self) -> None:
        if self.width is None:
            self.width = 256 if self.dataset == "digits" else 128

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {
            "quick": {"steps": 3000, "eval_every": 1000},
            "standard": {"steps": 8000, "eval_every": 2000},
            "full": {"steps": 40000, "eval_every": 4000},
        }

    def _dim(self) -> int:
        return 64 if self.dataset == "digits" else 2

    def _build_model(self) -> nn.Module:
        assert self.width is not None
        return Denoiser(self._dim(), self.width, self.n_layers, self.time_dim)

    def make_data(self, seed: int) -> DiffusionData:
        options: dict[str, Any] = {
            "betas": linear_betas(self.diffusion_steps),
            "batch_size": self.batch_size,
            "seed": seed,
            "n_eval": self.n_eval,
            "sample_seed": self.sample_seed,
            "n_projections": self.n_projections,
            "mmd_bandwidth": self.mmd_bandwidth,
        }
        if self.dataset == "digits":
            (x_train, _), (x_val, _), (x_test, _) = digits_pixels()
            net, _ = digits_features(self.feature_seed)
            return DiffusionData(
                x_train, x_val, x_test, features=lambda x: net.features(x.cpu()), **options
            )
        splits = toy_splits(self.dataset, self.n_train, self.n_eval, self.data_seed)
        return DiffusionData(*splits, **options)

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The epsilon-prediction loss: mean squared error."""
        return F.mse_loss(outputs, targets)

    def extra(self, result: dict[str, Any]) -> dict[str, Any]:
        """The metrics' floors (training data against test data) and, for digits, the feature
        classifier's test accuracy."""
        data = self.make_data(0)
        train, test = data.splits["train"], data.splits["test"]
        if self.dataset == "digits":
            _, accuracy = digits_features(self.feature_seed)
            floors = data.distances(train, "test")
            return {"floor_test_fd": floors["fd"], "feature_classifier_test_acc": accuracy}
        floors = data.distances(train[: len(test)], "test")
        return {f"floor_test_{key}": value for key, value in floors.items()}
