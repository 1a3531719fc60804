"""Data for the benchmark tasks, all built locally (nothing is ever downloaded).

Every loader returns fixed :class:`Splits` (train / validation / test), the same for every run
seed: the validation split is what tuning may look at, the test split is only ever reported.

* :func:`modular_addition` -- every pair ``(a, b)`` of residues mod ``p``, label ``(a + b) % p``,
  split at random (fixed split seed) into a train fraction, a validation fraction and the rest.
* :func:`load_digits_split` -- ``sklearn``'s bundled 8x8 digits: fixed stratified test and
  validation sets, a stratified training subset of ``n_train`` images whose labels may be
  corrupted (``label_noise``, training split only); pixels standardised with the training mean and
  std (constant pixels are only centred).
* :func:`load_mnist1d` -- MNIST-1D produced by the ``mnist1d`` package's procedural generator
  (``make_dataset`` with its default arguments and a fixed seed; never its download path), the
  last ``n_val`` training signals held out for validation; cached in memory per process.
* :func:`load_cifar` -- CIFAR-10/100 from the standard python-pickle folders, validated with errors
  that name the path and the expected files; :func:`augment_cifar` does random-crop (pad 4) and
  horizontal flips with tensor ops, :func:`normalize_cifar` the per-channel normalisation.
* :func:`scan_image_folder` -- ImageNet / Tiny-ImageNet from the class-per-folder layout;
  :class:`FolderData` decodes the JPEGs with Pillow in ``DataLoader`` workers, with the usual
  random-resized-crop + flip for training and resize + centre crop for evaluation (written here);
  :func:`write_image_folder` writes a small fake folder (tests, smoke runs).

:class:`TensorData` is the ``TaskData`` the trainable tasks return: seeded mini-batches per epoch,
``evaluate(model)`` on the train, validation and test sets, a fixed ``hessian_batch(n)`` and
``data_hash()`` (a SHA-256 prefix of every split's tensors: records carry it, so two runs can be
checked to have seen the same data).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Splits:
    """The fixed train / validation / test data of a task (inputs and int64 labels each)."""

    train: Batch
    val: Batch
    test: Batch

    def sizes(self) -> dict[str, int]:
        return {name: len(batch[1]) for name, batch in self.named()}

    def named(self) -> tuple[tuple[str, Batch], ...]:
        return (("train", self.train), ("val", self.val), ("test", self.test))


def tensors_hash(named: dict[str, torch.Tensor]) -> str:
    """A 16-hex-digit SHA-256 prefix of the tensors' names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(named):
        tensor = named[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# TaskData


class TensorData:
    """In-memory train / validation / test tensors with the ``TaskData`` interface.

    ``train_batches(epoch)`` shuffles with a generator seeded by ``(seed, epoch)`` (so it does not
    touch the global RNG) and yields ``batch_size`` slices (the last one may be smaller); with
    ``batch_size=None`` it yields the whole training set once (full batch). ``augment``, if given,
    is applied to every training batch with that generator, so the data order of a seed is the same
    for every optimizer. ``evaluate`` runs the model in eval mode on (at most ``eval_train_size``
    of) the training set, the validation set (``val``, when given) and the test set and returns
    ``train_loss, train_acc, [val_loss, val_acc,] test_loss, test_acc``; it leaves the model in the
    mode it found it in.
    """

    def __init__(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        *,
        batch_size: int | None,
        seed: int,
        val: Batch | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        eval_batch_size: int = 2048,
        eval_train_size: int | None = None,
    ) -> None:
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.val = val
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.eval_batch_size = eval_batch_size
        self.eval_train_size = eval_train_size

    def to(self, device: torch.device) -> TensorData:
        """Move the train and test tensors to ``device`` (in place; returns ``self``)."""
        self.x_train, self.y_train = self.x_train.to(device), self.y_train.to(device)
        self.x_test, self.y_test = self.x_test.to(device), self.y_test.to(device)
        if self.val is not None:
            self.val = (self.val[0].to(device), self.val[1].to(device))
        return self

    @classmethod
    def from_splits(cls, splits: Splits, **options: Any) -> TensorData:
        """``TensorData(*splits.train, *splits.test, val=splits.val, **options)``."""
        return cls(*splits.train, *splits.test, val=splits.val, **options)

    def data_hash(self) -> str:
        """:func:`tensors_hash` of every split (computed once)."""
        if getattr(self, "_hash", None) is None:
            named = {
                "x_train": self.x_train,
                "y_train": self.y_train,
                "x_test": self.x_test,
                "y_test": self.y_test,
            }
            if self.val is not None:
                named.update(x_val=self.val[0], y_val=self.val[1])
            self._hash = tensors_hash(named)
        return self._hash

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.y_train)
        return 1 if self.batch_size is None else -(-n // self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        n = len(self.y_train)
        if self.batch_size is None:
            yield self.x_train, self.y_train
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size].to(self.x_train.device)
            x = self.x_train[idx]
            if self.augment is not None:
                x = self.augment(x, gen)
            yield x, self.y_train[idx]

    def hessian_batch(self, n: int) -> Batch:
        """The first ``n`` training examples (un-augmented): the same batch every call."""
        return self.x_train[:n], self.y_train[:n]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        n_train = self.eval_train_size or len(self.y_train)
        train = _loss_acc(
            model, self.x_train[:n_train], self.y_train[:n_train], self.eval_batch_size
        )
        metrics = {"train_loss": train[0], "train_acc": train[1]}
        if self.val is not None:
            val = _loss_acc(model, *self.val, self.eval_batch_size)
            metrics.update(val_loss=val[0], val_acc=val[1])
        test = _loss_acc(model, self.x_test, self.y_test, self.eval_batch_size)
        metrics.update(test_loss=test[0], test_acc=test[1])
        model.train(was_training)
        return metrics


def _loss_acc(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int
) -> tuple[float, float]:
    device = next(model.parameters()).device
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch):
        xb, yb = x[start : start + batch].to(device), y[start : start + batch].to(device)
        out = model(xb)
        loss_sum += F.cross_entropy(out.float(), yb, reduction="sum").item()
        correct += int((out.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


# --------------------------------------------------------------------------------------------
# Modular addition


def modular_addition(
    p: int, train_frac: float, split_seed: int = 0, val_frac: float = 0.0
) -> Splits:
    """All ``p*p`` pairs ``x = (a, b)`` (int64, shape ``(p*p, 2)``), ``y = (a + b) % p``, randomly
    split: ``round(train_frac * p*p)`` pairs for training, the next ``round(val_frac * p*p)`` for
    validation, the rest for testing."""
    if not 0.0 < train_frac < 1.0 or not 0.0 <= val_frac < 1.0 - train_frac:
        raise ValueError(
            f"need 0 < train_frac < 1 and 0 <= val_frac < 1 - train_frac, got "
            f"{train_frac}, {val_frac}"
        )
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], dim=1)
    y = (x[:, 0] + x[:, 1]) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(split_seed))
    n_train, n_val = round(train_frac * p * p), round(val_frac * p * p)
    tr, va, te = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return Splits((x[tr], y[tr]), (x[va], y[va]), (x[te], y[te]))


# --------------------------------------------------------------------------------------------
# sklearn digits


DIGITS_TEST_SIZE = 450
DIGITS_VAL_SIZE = 300


def corrupt_labels(y: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """A copy of ``y`` in which ``round(fraction * len(y))`` labels, chosen at random (``seed``),
    are replaced by a different class drawn uniformly."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise must lie in [0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(y), generator=gen)[: round(fraction * len(y))]
    shift = torch.randint(1, num_classes, (len(chosen),), generator=gen)
    noisy = y.clone()
    noisy[chosen] = (y[chosen] + shift) % num_classes
    return noisy


@functools.lru_cache(maxsize=4)
def load_digits_split(
    n_train: int | None = None, label_noise: float = 0.0, split_seed: int = 0
) -> Splits:
    """``sklearn`` digits as 1 x 8 x 8 float32 images: a stratified test set of
    :data:`DIGITS_TEST_SIZE` (``random_state=split_seed``), a stratified validation set of
    :data:`DIGITS_VAL_SIZE` from the rest, and a stratified subset of ``n_train`` of the remaining
    1047 images for training (all of them when ``None``). A ``label_noise`` fraction of the
    training labels is corrupted (:func:`corrupt_labels`); validation and test labels are clean.
    Pixels are standardised with the training statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_rest, x_te, y_rest, y_te = train_test_split(
        digits.data,
        digits.target,
        test_size=DIGITS_TEST_SIZE,
        stratify=digits.target,
        random_state=split_seed,
    )
    x_tr, x_va, y_tr, y_va = train_test_split(
        x_rest, y_rest, test_size=DIGITS_VAL_SIZE, stratify=y_rest, random_state=split_seed
    )
    if n_train is not None and n_train < len(y_tr):
        x_tr, _, y_tr, _ = train_test_split(
            x_tr, y_tr, train_size=n_train, stratify=y_tr, random_state=split_seed
        )
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std == 0] = 1.0

    def prep(x: np.ndarray, y: np.ndarray) -> Batch:
        images = torch.from_numpy((x - mean) / std).float().reshape(-1, 1, 8, 8)
        return images, torch.from_numpy(y).long()

    x_train, y_train = prep(x_tr, y_tr)
    y_train = corrupt_labels(y_train, label_noise, 10, split_seed)
    return Splits((x_train, y_train), prep(x_va, y_va), prep(x_te, y_te))


# --------------------------------------------------------------------------------------------
# MNIST-1D


@functools.lru_cache(maxsize=4)
def load_mnist1d(num_samples: int = 5000, seed: int = 42, n_val: int = 500) -> Splits:
    """MNIST-1D from the procedural generator: defaults give 3500 train / 500 validation (the
    last ``n_val`` of the generator's training signals) / 1000 test signals of shape ``(1, 40)``
    (float32, globally standardised by the generator). The generator seeds Python's and NumPy's
    global RNGs; their states are restored afterwards."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    x = torch.from_numpy(data["x"]).float().unsqueeze(1)
    y = torch.from_numpy(data["y"]).long()
    if not 0 <= n_val < len(y):
        raise ValueError(f"n_val must lie in [0, {len(y)}), got {n_val}")
    x_test = torch.from_numpy(data["x_test"]).float().unsqueeze(1)
    cut = len(y) - n_val
    return Splits(
        (x[:cut], y[:cut]), (x[cut:], y[cut:]), (x_test, torch.from_numpy(data["y_test"]).long())
    )


# --------------------------------------------------------------------------------------------
# CIFAR

CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else ``$GEOPTIM_DATA``, else ``~/data``."""
    return Path(data_dir or os.environ.get("GEOPTIM_DATA") or "~/data").expanduser()


def load_cifar(name: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[Batch, Batch]:
    """``(x_train, y_train), (x_test, y_test)``: uint8 images ``(N, 3, 32, 32)``, int64 labels,
    read from ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch}`` or
    ``<root>/cifar-100-python/{train, test}``. Raises ``FileNotFoundError`` or ``ValueError``
    naming the path and the expected layout when the folder is missing or malformed."""
    if name not in CIFAR_LAYOUT:
        raise ValueError(f"unknown CIFAR dataset {name!r}; known: {', '.join(CIFAR_LAYOUT)}")
    sub, train_files, test_files, label_key, num_classes = CIFAR_LAYOUT[name]
    folder = data_root(data_dir) / sub
    expected = ", ".join(train_files + test_files)
    hint = (
        f"expected the python-pickle {name} folder {folder} holding {expected} "
        f"(set data_dir or GEOPTIM_DATA to its parent)"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} folder not found: {hint}")
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: missing {', '.join(missing)} in {folder}; {hint}")

    def read(files: list[str]) -> Batch:
        xs, ys = [], []
        for fname in files:
            path = folder / fname
            try:
                with open(path, "rb") as fh:
                    entry = pickle.load(fh, encoding="bytes")
                data = np.asarray(entry[b"data"], dtype=np.uint8)
                labels = np.asarray(entry[label_key], dtype=np.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{name}: cannot read {path} ({type(err).__name__}: {err}); it must be a "
                    f"pickled dict with keys b'data' (N x 3072 uint8) and {label_key!r}; {hint}"
                ) from err
            if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                raise ValueError(
                    f"{name}: {path} holds data of shape {data.shape} and {len(labels)} labels; "
                    f"expected N x 3072 and N labels; {hint}"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"{name}: {path} has labels outside 0..{num_classes - 1}; {hint}")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    return read(train_files), read(test_files)


def hold_out(batch: Batch, n_val: int, seed: int = 0) -> tuple[Batch, Batch]:
    """``(rest, held_out)``: ``n_val`` examples of ``batch`` chosen at random (``seed``)."""
    x, y = batch
    if not 0 <= n_val < len(y):
        raise ValueError(f"cannot hold out {n_val} of {len(y)} examples")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    keep, held = order[: len(y) - n_val], order[len(y) - n_val :]
    return (x[keep], y[keep]), (x[held], y[held])


def normalize_cifar(x: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 or [0, 1] float images -> per-channel standardised float32."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(CIFAR_MEAN[name], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD[name], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_cifar(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``H x W`` crop of the zero-padded batch (padding ``pad``) and a horizontal flip with
    probability 1/2, drawn per image from ``gen``. Works on any ``(N, C, H, W)`` tensor; the
    padding value 0 is the channel mean when applied after normalisation."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h)
    cols = dx[:, None] + torch.arange(w)[None, :]  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


# --------------------------------------------------------------------------------------------
# Image folders (ImageNet, Tiny-ImageNet)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_VAL_ANNOTATIONS = "val_annotations.txt"
Sample = tuple[str, int]
"""An image's path relative to the data root and its class index."""


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


@functools.lru_cache(maxsize=4)
def scan_image_folder(root: str) -> tuple[tuple[str, ...], tuple[Sample, ...], tuple[Sample, ...]]:
    """``(classes, train, test)`` of an image-classification folder (cached per root).

    ``root/train/<class>/**/*.JPEG`` gives the classes (sorted folder names: class ``i`` is the
    ``i``-th) and the training images, at any depth (Tiny-ImageNet's ``train/<wnid>/images/``
    too). The test images are ``root/val/<class>/**/*.JPEG`` (ImageNet's layout), or, when
    ``root/val/val_annotations.txt`` exists, Tiny-ImageNet's ``root/val/images/<file>`` labelled by
    that file's first two tab-separated columns (file name, class). ``FileNotFoundError`` or
    ``ValueError`` name the path and the expected layout."""
    base = Path(root)
    hint = (
        f"expected {base}/train/<class>/*.JPEG and {base}/val/<class>/*.JPEG (or Tiny-ImageNet's "
        f"val/images/ with val/{TINY_VAL_ANNOTATIONS}); set data_dir or GEOPTIM_DATA"
    )
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise FileNotFoundError(f"image folder not found: {hint}")
    classes = tuple(sorted(p.name for p in (base / "train").iterdir() if p.is_dir()))
    if not classes:
        raise FileNotFoundError(f"no class folders in {base / 'train'}: {hint}")
    index = {name: i for i, name in enumerate(classes)}

    def relative(path: Path) -> str:
        return path.relative_to(base).as_posix()

    train = tuple(
        (relative(path), index[name])
        for name in classes
        for path in _images_under(base / "train" / name)
    )
    annotations = base / "val" / TINY_VAL_ANNOTATIONS
    if annotations.is_file():
        test = []
        for number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(
                    f"{annotations} line {number}: expected 'file<TAB>class ...' "
                    f"with a class of {base / 'train'}, got {line!r}"
                )
            test.append((f"val/images/{fields[0]}", index[fields[1]]))
        test_samples = tuple(sorted(test))
    else:
        unknown = sorted(
            p.name for p in (base / "val").iterdir() if p.is_dir() and p.name not in index
        )
        if unknown:
            raise ValueError(f"{base / 'val'} has classes not in train/: {unknown[:5]}; {hint}")
        test_samples = tuple(
            (relative(path), i)
            for name, i in index.items()
            for path in _images_under(base / "val" / name)
        )
    if not train or not test_samples:
        raise FileNotFoundError(f"no images found under {base}: {hint}")
    return classes, train, test_samples


def random_resized_crop(
    image: Any, size: int, rng: np.random.Generator, min_scale: float = 0.08
) -> Any:
    """A crop of area ``s * H * W`` (``s ~ U[min_scale, 1]``) and aspect ratio ``r`` (``log r ~
    U[log 3/4, log 4/3]``) at a uniform position, resized to ``size x size`` (bilinear); after ten
    draws that do not fit, the largest central crop of ratio within ``[3/4, 4/3]``. Then a
    horizontal flip with probability 1/2. ``image`` is a PIL image."""
    from PIL import Image

    width, height = image.size
    area = width * height
    box = None
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:
        w = min(width, round(height * 4 / 3))
        h = min(height, round(width * 4 / 3))
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    crop = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def resize_center_crop(image: Any, size: int, crop_ratio: float = 0.875) -> Any:
    """Resize the shorter side to ``round(size / crop_ratio)`` (bilinear), then the central
    ``size x size`` crop (ImageNet's evaluation transform: 256 -> 224 at ratio 0.875)."""
    from PIL import Image

    width, height = image.size
    short = round(size / crop_ratio)
    scale = short / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class ImageTransform:
    """How a folder image becomes a normalised ``(3, size, size)`` float32 tensor: training
    images through :func:`random_resized_crop`, evaluation images through
    :func:`resize_center_crop`; then per-channel standardisation (ImageNet's mean and std)."""

    size: int
    crop_ratio: float = 0.875
    min_scale: float = 0.08

    def __call__(self, image: Any, rng: np.random.Generator | None) -> torch.Tensor:
        if rng is None:
            image = resize_center_crop(image, self.size, self.crop_ratio)
        else:
            image = random_resized_crop(image, self.size, rng, self.min_scale)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std


class ImageFolderSet(torch.utils.data.Dataset):
    """``samples`` read with Pillow (as RGB) and transformed. With ``augment_seed = (seed,
    epoch)`` the random crop of sample ``i`` is drawn from ``numpy.random.default_rng((seed,
    epoch, i))``: a function of the run seed, the epoch and the image alone, whichever worker
    loads it; ``None``: the evaluation transform."""

    def __init__(
        self,
        root: Path,
        samples: Sequence[Sample],
        transform: ImageTransform,
        augment_seed: tuple[int, int] | None = None,
    ) -> None:
        self.root, self.samples, self.transform = root, samples, transform
        self.augment_seed = augment_seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(self.root / path) as image:
            rgb = image.convert("RGB")
        rng = None if self.augment_seed is None else np.random.default_rng((*self.augment_seed, i))
        return self.transform(rgb, rng), label


class FolderData:
    """An image folder (:func:`scan_image_folder`) with the ``TaskData`` interface.

    ``n_val`` training images (chosen with seed 0, the same for every run) are held out for
    validation; the folder's ``val`` images are the test set. The training list is kept in that
    seed-0 shuffled order, so its first ``eval_train_size`` images are a random subset.
    ``train_batches(epoch)`` visits the training images in the order ``torch.randperm`` gives for
    the generator seeded with ``seed * 1_000_003 + epoch`` (as :class:`TensorData`), loading them
    with a torch ``DataLoader`` of ``workers`` processes; the batches are a function of ``(seed,
    epoch)`` whatever ``workers`` is. ``evaluate`` reports ``train_*`` on the first
    ``eval_train_size`` training images (no augmentation), ``val_*`` and ``test_*``.
    ``data_hash`` hashes the split file lists and labels (not the image bytes: reading all of
    ImageNet per run would cost minutes)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: ImageTransform,
        *,
        batch_size: int,
        seed: int,
        n_val: int,
        workers: int = 0,
        eval_train_size: int | None = None,
        eval_batch_size: int = 256,
    ) -> None:
        import PIL.Image  # noqa: F401  (a missing Pillow fails here, not in a loader worker)

        self.root = Path(root).expanduser()
        self.classes, train, self.test = scan_image_folder(str(self.root))
        if not 0 <= n_val < len(train):
            raise ValueError(f"cannot hold out {n_val} of {len(train)} training images")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        cut = len(train) - n_val
        self.train = tuple(train[i] for i in order[:cut])  # shuffled: any prefix spans classes
        self.val = tuple(train[i] for i in order[cut:])
        self.transform, self.batch_size, self.seed = transform, batch_size, seed
        self.workers, self.eval_batch_size = workers, eval_batch_size
        self.eval_train_size = eval_train_size

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.batch_size)

    def _loader(
        self,
        samples: Sequence[Sample],
        batch: int,
        augment_seed: tuple[int, int] | None = None,
        order: Sequence[int] | None = None,
    ) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            ImageFolderSet(self.root, samples, self.transform, augment_seed),
            batch_size=batch,
            sampler=order,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
        )

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train), generator=gen).tolist()
        yield from self._loader(self.train, self.batch_size, (self.seed, epoch), order)

    def hessian_batch(self, n: int) -> Batch:
        """The first ``n`` training images (evaluation transform): the same batch every call."""
        return next(iter(self._loader(self.train[:n], n)))

    def data_hash(self) -> str:
        digest = hashlib.sha256()
        for name, samples in (("train", self.train), ("val", self.val), ("test", self.test)):
            digest.update(f"{name}:{len(samples)};".encode())
            digest.update("\n".join(f"{path}\t{label}" for path, label in samples).encode())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        splits = (
            ("train", self.train[: self.eval_train_size or len(self.train)]),
            ("val", self.val),
            ("test", self.test),
        )
        metrics = {}
        for name, samples in splits:
            if not samples:
                continue
            loss, acc = _loader_loss_acc(model, self._loader(samples, self.eval_batch_size))
            metrics.update({f"{name}_loss": loss, f"{name}_acc": acc})
        model.train(was_training)
        return metrics


def _loader_loss_acc(model: nn.Module, batches: Any) -> tuple[float, float]:
    device = next(model.parameters()).device
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").item()
        correct += int((out.argmax(1) == y).sum())
        count += len(y)
    return loss_sum / count, correct / count


def write_image_folder(
    root: Path,
    classes: Sequence[str],
    per_class: int,
    size: tuple[int, int] = (40, 48),
    tiny_val: bool = False,
    seed: int = 0,
) -> Path:
    """Write a small fake image folder of random-coloured JPEGs (Pillow) under ``root``:
    ``train/<class>/`` with ``per_class`` images, and ``val/<class>/`` with two (or, with
    ``tiny_val``, Tiny-ImageNet's ``val/images/`` and ``val_annotations.txt``). Each class has its
    own mean colour, so a model can learn it. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size

    def write(path: Path, class_index: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        base = (np.arange(3) * 80 + class_index * 97) % 256
        pixels = np.clip(base + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=90)

    annotations = []
    for c, name in enumerate(classes):
        for k in range(per_class):
            write(root / "train" / name / f"{name}_{k}.JPEG", c)
        for k in range(2):
            if tiny_val:
                file = f"val_{c}_{k}.JPEG"
                write(root / "val" / "images" / file, c)
                annotations.append(f"{file}\t{name}\t0\t0\t{width - 1}\t{height - 1}")
            else:
                write(root / "val" / name / f"val_{c}_{k}.JPEG", c)
    if tiny_val:
        (root / "val" / TINY_VAL_ANNOTATIONS).write_text("\n".join(annotations) + "\n")
    return root
