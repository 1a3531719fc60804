"""Benchmark data: splits, shapes, determinism, the CIFAR loader and its errors, augmentation."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geoptim.bench import data

SPLIT_METRICS = {f"{split}_{m}" for split in ("train", "val", "test") for m in ("loss", "acc")}
"""What :meth:`TensorData.evaluate` returns: loss and accuracy on every split."""
CURVE_KEYS = {"step", "epoch", "lr", "time_s", *SPLIT_METRICS}
"""The curves of a classification run of the shared training loop."""


def write_fake_cifar(root: Path, name: str = "cifar10", per_file: int = 4, n_test: int = 3) -> Path:
    """A tiny CIFAR folder in the standard pickle layout under ``root``; returns ``root``."""
    sub, train_files, test_files, label_key, num_classes = data.CIFAR_LAYOUT[name]
    folder = root / sub
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, fname in enumerate(train_files + test_files):
        n = n_test if fname in test_files else per_file
        entry = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [(i + j) % num_classes for j in range(n)],
            b"batch_label": b"fake",
        }
        with open(folder / fname, "wb") as fh:
            pickle.dump(entry, fh)
    return root


# ---------------------------------------------------------------- modular addition


def test_modular_addition_split() -> None:
    splits = data.modular_addition(113, 0.3, val_frac=0.1)
    (x_tr, y_tr), (x_va, _), (x_te, y_te) = splits.train, splits.val, splits.test
    assert len(y_tr) == round(0.3 * 113 * 113) and len(x_va) == round(0.1 * 113 * 113)
    assert sum(splits.sizes().values()) == 113 * 113
    x = torch.cat([x_tr, x_va, x_te])
    assert len({tuple(row) for row in x.tolist()}) == 113 * 113  # every pair exactly once
    y = torch.cat([y_tr, splits.val[1], y_te])
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % 113)
    again = data.modular_addition(113, 0.3, val_frac=0.1)
    assert torch.equal(again.train[0], x_tr) and torch.equal(again.test[0], x_te)
    assert not torch.equal(data.modular_addition(113, 0.3, split_seed=1).train[0], x_tr)
    assert len(data.modular_addition(113, 0.3).val[1]) == 0
    for train_frac, val_frac in ((1.0, 0.0), (0.5, 0.5)):
        with pytest.raises(ValueError):
            data.modular_addition(113, train_frac, val_frac=val_frac)


# ---------------------------------------------------------------- digits


def test_digits_split() -> None:
    splits = data.load_digits_split()
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits.train, splits.val, splits.test
    assert splits.sizes() == {"train": 1047, "val": 300, "test": 450}
    assert x_tr.shape == (1047, 1, 8, 8) and x_te.shape == (450, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    # the three splits are disjoint and together make the whole data set
    rows = {tuple(r) for x in (x_tr, x_va, x_te) for r in x.flatten(1).tolist()}
    assert len(rows) == len({tuple(r) for r in torch.cat([x_tr, x_va, x_te]).flatten(1).tolist()})
    # stratified: every class's share of each split matches the training split's
    share_tr = torch.bincount(y_tr, minlength=10) / len(y_tr)
    for y in (y_va, y_te):
        assert torch.allclose(torch.bincount(y, minlength=10) / len(y), share_tr, atol=0.01)
    # standardised with training statistics
    flat = x_tr.flatten(1)
    std = flat.std(0, unbiased=False)
    varying = std > 0
    assert flat.mean(0).abs().max() < 1e-5
    assert torch.allclose(std[varying], torch.ones(int(varying.sum())), atol=1e-4)


def test_digits_small_noisy_train_split() -> None:
    clean = data.load_digits_split(300)
    noisy = data.load_digits_split(300, 0.2)
    assert clean.sizes() == {"train": 300, "val": 300, "test": 450}
    assert torch.equal(clean.train[0], noisy.train[0])  # the same images
    wrong = noisy.train[1] != clean.train[1]
    assert int(wrong.sum()) == 60  # exactly 20% of the training labels, each to another class
    for split in ("val", "test"):  # validation and test labels stay clean
        assert torch.equal(getattr(clean, split)[1], getattr(noisy, split)[1])
    assert torch.equal(clean.test[1], data.load_digits_split().test[1])  # same test images


def test_corrupt_labels() -> None:
    y = torch.arange(1000) % 10
    noisy = data.corrupt_labels(y, 0.3, 10, seed=0)
    assert int((noisy != y).sum()) == 300 and set(noisy.tolist()) == set(range(10))
    assert torch.equal(noisy, data.corrupt_labels(y, 0.3, 10, seed=0))
    assert torch.equal(data.corrupt_labels(y, 0.0, 10, seed=0), y)
    with pytest.raises(ValueError):
        data.corrupt_labels(y, 1.5, 10, seed=0)


# ---------------------------------------------------------------- MNIST-1D


def test_mnist1d_generated_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    random.seed(123)
    np.random.seed(123)
    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
    splits = data.load_mnist1d(num_samples=500, seed=7, n_val=50)
    (x_tr, y_tr), (x_te, _) = splits.train, splits.test
    assert splits.sizes() == {"train": 350, "val": 50, "test": 100}
    assert x_tr.shape == (350, 1, 40) and x_te.shape == (100, 1, 40)
    assert y_tr.dtype == torch.int64 and set(y_tr.tolist()) <= set(range(10))
    assert list(tmp_path.iterdir()) == []  # nothing cached on disk
    assert random.getstate() == py_state  # global RNGs left as they were
    assert np.array_equal(np.random.get_state()[1], np_state)
    data.load_mnist1d.cache_clear()
    again = data.load_mnist1d(num_samples=500, seed=7, n_val=50)
    assert torch.equal(again.train[0], x_tr)
    other = data.load_mnist1d(num_samples=500, seed=8, n_val=50)
    assert not torch.equal(other.train[0], x_tr)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader(tmp_path: Path, name: str) -> None:
    write_fake_cifar(tmp_path, name)
    (x_tr, y_tr), (x_te, y_te) = data.load_cifar(name, tmp_path)
    n_train = 20 if name == "cifar10" else 4
    assert x_tr.shape == (n_train, 3, 32, 32) and x_tr.dtype == torch.uint8
    assert x_te.shape == (3, 3, 32, 32) and y_te.shape == (3,)
    assert y_tr.dtype == torch.int64
    # rows are the 3072 bytes of one image, channel-major
    sub, _, test_files, _, _ = data.CIFAR_LAYOUT[name]
    raw = pickle.loads((tmp_path / sub / test_files[0]).read_bytes())
    assert torch.equal(x_te[1].flatten(), torch.from_numpy(raw[b"data"][1]))


def test_cifar_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_cifar(tmp_path)
    monkeypatch.setenv("GEOPTIM_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    assert len(data.load_cifar("cifar10")[0][1]) == 20
    monkeypatch.delenv("GEOPTIM_DATA")
    assert data.data_root() == Path("~/data").expanduser()


def test_cifar_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as err:
        data.load_cifar("cifar10", tmp_path)
    assert "data_batch_1" in str(err.value) and "test_batch" in str(err.value)


def test_cifar_missing_file(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        data.load_cifar("cifar10", tmp_path)


def _rewrite(path: Path, entry: object) -> None:
    with open(path, "wb") as fh:
        pickle.dump(entry, fh)


def test_cifar_malformed_files(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, "cifar100")
    test_file = tmp_path / "cifar-100-python" / "test"
    good = pickle.loads(test_file.read_bytes())

    test_file.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"cannot read .*test"):
        data.load_cifar("cifar100", tmp_path)

    _rewrite(test_file, {b"data": good[b"data"], b"labels": good[b"fine_labels"]})
    with pytest.raises(ValueError, match="fine_labels"):
        data.load_cifar("cifar100", tmp_path)

    _rewrite(test_file, {b"data": good[b"data"][:, :100], b"fine_labels": good[b"fine_labels"]})
    with pytest.raises(ValueError, match="3072"):
        data.load_cifar("cifar100", tmp_path)

    _rewrite(test_file, {b"data": good[b"data"], b"fine_labels": [0, 1]})
    with pytest.raises(ValueError, match="labels"):
        data.load_cifar("cifar100", tmp_path)

    _rewrite(test_file, {b"data": good[b"data"], b"fine_labels": [0, 1, 100]})
    with pytest.raises(ValueError, match="outside"):
        data.load_cifar("cifar100", tmp_path)

    _rewrite(test_file, [1, 2, 3])
    with pytest.raises(ValueError, match="pickled dict"):
        data.load_cifar("cifar100", tmp_path)


def test_normalize_cifar() -> None:
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = data.normalize_cifar(x, "cifar10")
    expected = [(1 - m) / s for m, s in zip(data.CIFAR_MEAN["cifar10"], data.CIFAR_STD["cifar10"])]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected))


def test_augment_is_a_crop_or_flipped_crop() -> None:
    x = torch.randn(6, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = data.augment_cifar(x, gen, pad=2)
    assert out.shape == x.shape
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        candidates = [
            (padded[i, :, dy : dy + 8, dx : dx + 8], flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
        ]
        found = [f for crop, f in candidates if torch.equal(out[i], crop.flip(-1) if f else crop)]
        assert found, f"image {i} is no crop of its padded input"
        flips += found[0]
    assert 0 < flips < len(x)  # with this seed both cases occur
    again = data.augment_cifar(x, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(again, out)


# ---------------------------------------------------------------- TensorData


def _tensor_data(batch_size: int | None = 4, seed: int = 0) -> data.TensorData:
    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(10) % 2
    return data.TensorData(x, y, x[:4], y[:4], val=(x[:3], y[:3]), batch_size=batch_size, seed=seed)


def test_hold_out() -> None:
    x, y = torch.arange(20).unsqueeze(1), torch.arange(20)
    (_, y_rest), (x_held, y_held) = data.hold_out((x, y), 5, seed=3)
    assert len(y_held) == 5 and len(y_rest) == 15
    assert sorted(torch.cat([y_rest, y_held]).tolist()) == list(range(20))
    assert torch.equal(x_held.squeeze(1), y_held)
    assert torch.equal(data.hold_out((x, y), 5, seed=3)[1][1], y_held)
    with pytest.raises(ValueError):
        data.hold_out((x, y), 20)


def test_data_hash() -> None:
    first = _tensor_data().data_hash()
    assert first == _tensor_data(seed=9).data_hash()  # the seed orders batches, not the data
    assert len(first) == 16 and int(first, 16) >= 0
    td = _tensor_data()
    changed = data.TensorData(
        td.x_train, td.y_train, td.x_test, 1 - td.y_test, val=td.val, batch_size=4, seed=0
    )
    assert changed.data_hash() != first
    no_val = data.TensorData(td.x_train, td.y_train, td.x_test, td.y_test, batch_size=4, seed=0)
    assert no_val.data_hash() != first


def test_tensor_data_batches() -> None:
    td = _tensor_data()
    assert td.steps_per_epoch == 3
    batches = list(td.train_batches(0))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[0] for b in batches]).flatten()
    assert sorted(seen.tolist()) == list(range(10))  # each example once per epoch
    assert all(torch.equal(b[1], b[0].flatten().long() % 2) for b in batches)
    again = torch.cat([b[0] for b in _tensor_data().train_batches(0)]).flatten()
    assert torch.equal(seen, again)
    next_epoch = torch.cat([b[0] for b in td.train_batches(1)]).flatten()
    other_seed = torch.cat([b[0] for b in _tensor_data(seed=1).train_batches(0)]).flatten()
    assert not torch.equal(seen, next_epoch) and not torch.equal(seen, other_seed)


def test_tensor_data_to_device() -> None:
    td = _tensor_data()
    assert td.to(torch.device("cpu")) is td
    assert td.x_train.device.type == "cpu" and td.y_test.device.type == "cpu"


def test_tensor_data_full_batch_and_hessian_batch() -> None:
    td = _tensor_data(batch_size=None)
    assert td.steps_per_epoch == 1
    ((x, _),) = list(td.train_batches(5))
    assert torch.equal(x, td.x_train)
    hx, hy = td.hessian_batch(3)
    assert torch.equal(hx, td.x_train[:3]) and torch.equal(hy, td.y_train[:3])
    assert torch.equal(td.hessian_batch(3)[0], hx)


def test_tensor_data_evaluate() -> None:
    td = _tensor_data()
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [0.0]]))
        model.bias.copy_(torch.tensor([1.0, 0.0]))  # always predicts class 0
    model.train()
    metrics = td.evaluate(model)
    assert model.training
    assert set(metrics) == SPLIT_METRICS
    assert metrics["train_acc"] == 0.5 and metrics["test_acc"] == 0.5
    assert metrics["val_acc"] == pytest.approx(2 / 3)  # labels 0, 1, 0
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(td.x_train), td.y_train))
    assert metrics["train_loss"] == pytest.approx(expected)
