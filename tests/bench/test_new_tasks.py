"""The ``charlm``, ``vit`` and ``ddpm`` tasks: their data (shapes, determinism, no download, the
standard-library text's hashes), models (parameter counts from the architecture formulas, forward
shapes, causality), metrics against known answers, and a few training steps of each."""

from __future__ import annotations

import hashlib
import math
import socket
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from geoptim.bench import tasks
from geoptim.bench.tasks import charlm, ddpm, vit


def block_params(d: int, m: int) -> int:
    """One pre-LN block: 2 LayerNorms, qkv and output projections with biases, 2-layer MLP."""
    layer_norms = 2 * (2 * d)
    attention = (d * 3 * d + 3 * d) + (d * d + d)
    mlp = (d * m + m) + (m * d + d)
    return layer_norms + attention + mlp


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def loss_drops_on_fixed_batch(task: Any, steps: int = 8, lr: float = 3e-3) -> tuple[float, float]:
    """The task loss on ``hessian_batch(16)`` before and after ``steps`` Adam steps on it."""
    model, data = task.make_model(0), task.make_data(0)
    x, y = data.hessian_batch(16)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps + 1):
        loss = task.loss_fn(model(x), y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses[0], losses[-1]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails; the tasks' caches are emptied so data is rebuilt."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a task tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    charlm.stdlib_splits.cache_clear()


def test_registered() -> None:
    for name in ("charlm", "vit", "ddpm"):
        task = tasks.get_task(name)
        assert task.name == name and task.description
        for suite in ("quick", "standard", "full"):
            budget = task.default_budget(suite)
            assert ("epochs" in budget) != ("steps" in budget)
        quick, full = (task.estimated_seconds(task.default_budget(s)) for s in ("quick", "full"))
        assert 0 < quick < full
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        tasks.get_task("ddpm", dataset="cifar")
    with pytest.raises(ValueError, match="diffusion_steps must be > 20"):
        tasks.get_task("ddpm", diffusion_steps=20)
    with pytest.raises(ValueError, match="patch"):
        tasks.get_task("vit", patch=3)


def test_data_without_network(no_network: None) -> None:
    (train, val, test), _ = charlm.stdlib_splits()
    assert len(train) > 300_000 and len(val) > 40_000 and len(test) > 40_000
    for dataset in ddpm.DATASETS:
        assert len(tasks.get_task("ddpm", dataset=dataset).make_data(0).splits["val"]) > 0
    assert tasks.get_task("vit").make_data(0).x_train.shape[1:] == (1, 8, 8)


def test_data_fixed_across_seeds_and_hashed() -> None:
    """The splits do not depend on the run seed; the data hash changes with the data."""
    small = {"n_train": 300, "n_eval": 100}
    for name, options, changed in (
        ("charlm", {}, {"block": 2048}),
        ("vit", {}, {"split_seed": 1}),
        ("ddpm", small, {"data_seed": 1}),
        ("ddpm", small, {"diffusion_steps": 50}),
    ):
        task = tasks.get_task(name, **options)
        first, other = task.make_data(0), task.make_data(7)
        assert first.data_hash() == other.data_hash()
        assert (
            first.data_hash() != tasks.get_task(name, **options, **changed).make_data(0).data_hash()
        )


# ---------------------------------------------------------------- charlm


def test_stdlib_hashes_recorded() -> None:
    folder = Path(sysconfig.get_paths()["stdlib"])
    expected = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in charlm.STDLIB_FILES
    }
    text, hashes = charlm.read_stdlib_text()
    assert hashes == expected
    assert text == "".join((folder / name).read_text("utf-8") for name in charlm.STDLIB_FILES)
    extra = tasks.get_task("charlm").extra({})
    assert extra["text_sha256"] == expected
    assert extra["text_is_reference"] == (expected == charlm.REFERENCE_SHA256)
    assert set(charlm.REFERENCE_SHA256) == set(charlm.STDLIB_FILES)


def test_encode_and_split_blocks() -> None:
    assert charlm.VOCAB_SIZE == 97
    codes = charlm.encode("a\n~ \u00e9\t")
    assert codes.tolist() == [ord("a") - 31, 0, ord("~") - 31, 1, 96, 96]
    train, val, test = charlm.split_blocks(torch.arange(46), block=4)  # 12 chunks, last of 2
    assert val.tolist() == [32, 33, 34, 35] and test.tolist() == [36, 37, 38, 39]
    assert train.tolist() == list(range(32)) + list(range(40, 46))


def test_char_data_batches() -> None:
    stream = torch.arange(1000)  # each value is its position
    data = charlm.CharData(
        stream, stream[:200], stream[:200], context=8, batch_size=4, seed=3, eval_chars=64
    )
    assert data.steps_per_epoch == ((999 // 8) - 1) // 4
    batches = list(data.train_batches(0))
    assert len(batches) == data.steps_per_epoch
    x, y = batches[0]
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x + 1, y)  # next characters
    starts = torch.cat([b[0][:, 0] for b in batches])
    assert len(set((starts % 8).tolist())) == 1  # one offset per epoch, windows a context apart
    assert len(set(starts.tolist())) == len(starts)  # no window twice
    again = list(
        charlm.CharData(
            stream, stream, stream, context=8, batch_size=4, seed=3, eval_chars=64
        ).train_batches(0)
    )
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    other = next(
        iter(
            charlm.CharData(
                stream, stream, stream, context=8, batch_size=4, seed=4, eval_chars=64
            ).train_batches(0)
        )
    )
    assert not torch.equal(other[0], x)


def test_bits_per_char_of_uniform_predictor() -> None:
    targets = torch.randint(charlm.VOCAB_SIZE, (3, 5))
    uniform = torch.zeros(3, 5, charlm.VOCAB_SIZE)
    assert charlm.bits_per_char(uniform, targets) == pytest.approx(math.log2(97), abs=1e-6)
    sure = torch.nn.functional.one_hot(targets, charlm.VOCAB_SIZE).float() * 100.0
    assert charlm.bits_per_char(sure, targets) == pytest.approx(0.0, abs=1e-6)


def test_char_transformer_params_shape_and_causality() -> None:
    v, ctx, d, m, layers = charlm.VOCAB_SIZE, 64, 64, 256, 2
    task = tasks.get_task("charlm")
    model = task.make_model(0)
    expected = v * d + ctx * d + layers * block_params(d, m) + 2 * d + (d * v + v)
    assert num_params(model) == expected
    codes = torch.randint(v, (2, ctx))
    logits = model(codes)
    assert logits.shape == (2, ctx, v)
    changed = codes.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % v
    out = model(changed)
    torch.testing.assert_close(out[:, :40], logits[:, :40])  # the future is not seen
    assert not torch.allclose(out[:, 40:], logits[:, 40:])


def test_charlm_trains() -> None:
    task = tasks.get_task("charlm", eval_chars=512)
    before, after = loss_drops_on_fixed_batch(task)
    assert before == pytest.approx(math.log(97), rel=0.1) and after < before - 0.5
    result = task.run("adamw", {"lr": 1e-3}, 0, {"steps": 2, "eval_every": 2})
    assert {"val_bpc", "test_bpc", "val_acc"} <= set(result["final"])
    assert result["extra"]["text_sha256"] == charlm.stdlib_splits()[1]
    assert result["extra"]["data_hash"] == task.data_hash()


# ---------------------------------------------------------------- vit


def test_patchify() -> None:
    image = torch.arange(64.0).reshape(1, 1, 8, 8)
    patches = vit.patchify(image, 2)
    assert patches.shape == (1, 16, 4)
    assert patches[0, 0].tolist() == [0, 1, 8, 9]
    assert patches[0, 1].tolist() == [2, 3, 10, 11]
    assert patches[0, 4].tolist() == [16, 17, 24, 25]
    with pytest.raises(ValueError, match="not divisible"):
        vit.patchify(image, 3)


def test_vit_params_and_shape() -> None:
    d, m, layers, patches = 64, 128, 2, 16
    model = tasks.get_task("vit").make_model(0)
    expected = (4 * d + d) + d + (patches + 1) * d + layers * block_params(d, m) + 2 * d
    assert num_params(model) == expected + (d * 10 + 10)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_vit_data_and_training() -> None:
    task = tasks.get_task("vit")
    data = task.make_data(0)
    assert data.x_train.shape == (1047, 1, 8, 8) and data.x_test.shape == (450, 1, 8, 8)
    assert data.val is not None and data.val[0].shape == (300, 1, 8, 8)
    first = next(iter(data.train_batches(0)))[1]
    assert torch.equal(first, next(iter(task.make_data(0).train_batches(0)))[1])
    assert not torch.equal(first, next(iter(task.make_data(1).train_batches(0)))[1])
    before, after = loss_drops_on_fixed_batch(task)
    assert after < before - 0.5
    result = task.run("adamw", {"lr": 1e-3}, 0, {"epochs": 1, "batches_per_epoch": 2})
    assert result["steps"] == 2 and 0.0 <= result["final"]["val_acc"] <= 1.0


# ---------------------------------------------------------------- ddpm: diffusion


def test_linear_betas() -> None:
    torch.testing.assert_close(
        ddpm.linear_betas(1000), torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    )
    betas = ddpm.linear_betas(100)
    assert betas[0].item() == pytest.approx(1e-3) and betas[-1].item() == pytest.approx(0.2)
    assert torch.prod(1 - betas).item() < 1e-4  # x_T is nearly pure noise
    with pytest.raises(ValueError, match="more than 20 steps"):
        ddpm.linear_betas(20)


def test_noisy_batch_is_the_forward_process() -> None:
    betas = ddpm.linear_betas(50)
    x0 = torch.randn(300, 2)
    inputs, eps = ddpm.noisy_batch(x0, betas, torch.Generator().manual_seed(0))
    t = inputs[:, -1].long()
    assert torch.equal(inputs[:, -1], t.float()) and t.min() >= 0 and t.max() < 50
    alpha_bar = torch.cumprod(1 - betas, 0).float()[t][:, None]
    torch.testing.assert_close(inputs[:, :2], alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps)


def test_sampler_with_the_exact_denoiser_recovers_a_gaussian() -> None:
    """For x0 ~ N(mu, s^2 I), E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)
    with a = alpha_bar_t: ancestral sampling with this denoiser must return N(mu, s^2 I)."""
    mu, s, betas = torch.tensor([2.0, -1.0]), 0.5, ddpm.linear_betas(200)
    alpha_bar = torch.cumprod(1 - betas, 0).float()

    class Exact(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            x, a = inputs[:, :2], alpha_bar[inputs[:, 2].long()][:, None]
            return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    samples = ddpm.sample(Exact(), 4000, 2, betas, torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples.mean(0), mu, atol=0.03, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((2,), s), atol=0.03, rtol=0)


def test_denoiser_params_shape_and_time_embedding() -> None:
    emb = ddpm.time_embedding(torch.tensor([0.0, 3.0]), 8)
    assert emb.shape == (2, 8) and emb[0].tolist() == [0.0] * 4 + [1.0] * 4
    assert emb[1, 0].item() == pytest.approx(math.sin(3.0))
    for dataset, dim, width in (("moons", 2, 128), ("digits", 64, 256)):
        model = tasks.get_task("ddpm", dataset=dataset).make_model(0)
        e, layers = 32, 3
        expected = (dim + e) * width + width + (layers - 1) * (width + 1) * width
        assert num_params(model) == expected + (width + 1) * dim
        inputs = ddpm.pack(torch.randn(7, dim), torch.randint(100, (7,)))
        assert model(inputs).shape == (7, dim)


# ---------------------------------------------------------------- ddpm: metrics


def test_sliced_wasserstein_known_answers() -> None:
    gen = torch.Generator().manual_seed(0)
    a, shift = torch.randn(500, 2, generator=gen), torch.tensor([0.6, -0.8])  # |shift| = 1
    directions = ddpm.random_directions(4000, 2, seed=1)
    torch.testing.assert_close(directions.norm(dim=1), torch.ones(4000, dtype=torch.float64))
    assert ddpm.sliced_wasserstein(a, a, directions) == pytest.approx(0.0, abs=1e-12)
    # a translated copy: W1 of each projection is exactly |<shift, theta>|, mean 2 |shift| / pi
    shifted = ddpm.sliced_wasserstein(a, a + shift, directions)
    assert shifted == pytest.approx((directions @ shift.double()).abs().mean().item(), rel=1e-6)
    assert shifted == pytest.approx(2 / math.pi, rel=0.03)
    # independent samples: each projection's W1 agrees with scipy's
    b = torch.randn(500, 2, generator=gen) + shift
    theta = directions[:1]
    reference = scipy.stats.wasserstein_distance(
        (a.double() @ theta.T).squeeze(1).numpy(), (b.double() @ theta.T).squeeze(1).numpy()
    )
    assert ddpm.sliced_wasserstein(a, b, theta) == pytest.approx(reference, rel=1e-9)
    with pytest.raises(ValueError, match="equally many"):
        ddpm.sliced_wasserstein(a, b[:10], theta)


def test_mmd_known_answers() -> None:
    """For X ~ N(0, I_d), Y ~ N(s, I_d) and bandwidth h,
    MMD^2 = 2 (1 + 2 / h^2)^(-d/2) (1 - exp(-|s|^2 / (2 (h^2 + 2)))); N(0, I_2) is represented
    by the 40 x 40 grid of its quantiles (a random sample would need ~10^5 points for 1%)."""
    q = torch.from_numpy(scipy.stats.norm.ppf((np.arange(40) + 0.5) / 40)).float()
    grid = torch.cartesian_prod(q, q)
    assert ddpm.mmd2(grid, grid, 1.0) == pytest.approx(0.0, abs=1e-12)
    sample = torch.randn(1600, 2, generator=torch.Generator().manual_seed(0))
    assert abs(ddpm.mmd2(grid, sample, 1.0)) < 3e-3  # same distribution: O(1/n)
    for s, h in (([1.0, 0.5], 1.0), ([0.3, 0.0], 0.5), ([2.0, 1.0], 2.0)):
        shift = torch.tensor(s)
        exact = 2 / (1 + 2 / h**2) * (1 - math.exp(-shift.square().sum() / (2 * (h**2 + 2))))
        assert ddpm.mmd2(grid, grid + shift, h) == pytest.approx(exact, rel=0.02)


def test_frechet_distance_known_answers() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, generator=gen) @ torch.tensor([[1.0, 0.3, 0], [0, 1, 0.5], [0, 0, 2]])
    assert ddpm.sample_frechet(x, x) == pytest.approx(0.0, abs=1e-8)
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([3.0, -1.0])
    diag1, diag2 = torch.diag(torch.tensor([4.0, 1.0])), torch.diag(torch.tensor([1.0, 9.0]))
    # commuting covariances: |mu1 - mu2|^2 + sum (sigma1_i - sigma2_i)^2 = 13 + (1 + 4)
    assert ddpm.frechet_distance(mu1, diag1, mu2, diag2) == pytest.approx(18.0, rel=1e-12)
    cov1 = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    cov2 = torch.tensor([[1.0, -0.3], [-0.3, 0.5]], dtype=torch.float64)
    cross = scipy.linalg.sqrtm((cov1 @ cov2).numpy()).real.trace()
    exact = 13.0 + (cov1.trace() + cov2.trace()).item() - 2 * cross
    assert ddpm.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(exact, rel=1e-9)


# ---------------------------------------------------------------- ddpm: data and training


def test_toy_and_digits_data() -> None:
    for dataset in ("moons", "swiss_roll"):
        train, val, test = ddpm.toy_splits(dataset, 400, 100, seed=0)
        assert train.shape == (400, 2) and val.shape == test.shape == (100, 2)
        torch.testing.assert_close(train.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(train.std(0), torch.ones(2), atol=1e-5, rtol=0)
        assert torch.equal(ddpm.toy_splits(dataset, 400, 100, seed=0)[2], test)
        assert not torch.equal(ddpm.toy_splits(dataset, 400, 100, seed=1)[2], test)
    (x_train, y_train), (x_val, _), (x_test, _) = ddpm.digits_pixels()
    assert x_train.shape == (1047, 64) and len(x_val) == 300 and len(x_test) == 450
    assert x_train.min() == -1.0 and x_train.max() == 1.0
    assert set(y_train.tolist()) == set(range(10))


def test_digits_features_deterministic_and_accurate() -> None:
    train_uncached = ddpm.digits_features.__wrapped__
    state = torch.get_rng_state()
    net, _ = train_uncached(0, 20)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    for p, q in zip(net.parameters(), train_uncached(0, 20)[0].parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(net.head.weight, train_uncached(1, 20)[0].head.weight)
    assert ddpm.digits_features(0)[1] > 0.9  # the default classifier's test accuracy


def test_ddpm_batches_and_training() -> None:
    task = tasks.get_task("ddpm", n_train=512, n_eval=128, diffusion_steps=40)
    data = task.make_data(0)
    inputs, eps = next(iter(data.train_batches(0)))
    assert inputs.shape == (256, 3) and eps.shape == (256, 2)
    again = next(iter(task.make_data(0).train_batches(0)))[0]
    assert torch.equal(inputs, again)
    assert not torch.equal(inputs, next(iter(task.make_data(1).train_batches(0)))[0])
    before, after = loss_drops_on_fixed_batch(task, steps=20, lr=1e-2)
    assert after < 0.8 * before
    hparams = {"lr": 1e-3, "agr_until": 1}  # AGR for the first step only: "stop AGR late"
    result = task.run("adamw_agr", hparams, 0, {"steps": 2, "eval_every": 2})
    assert {"val_loss", "val_swd", "val_mmd2", "test_swd", "test_mmd2"} <= set(result["final"])
    assert 0 < result["extra"]["floor_test_swd"] < result["final"]["test_swd"]
