"""Character-level language modelling on Python's own standard library (analog of the AGR paper's
ALBERT/WikiText-2 and the SepNorm paper's T5 experiments, at CPU scale).

Text: the twelve modules :data:`STDLIB_FILES` of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), read at run time and never copied into the repository,
concatenated in that order. Their SHA-256 hashes are recorded in every result
(``extra["text_sha256"]``) together with ``extra["text_is_reference"]``: whether they equal
:data:`REFERENCE_SHA256`, the files of CPython :data:`REFERENCE_PYTHON` the documented figures were
measured on. Another Python's files are *used* (not refused) -- they are the same kind of text --
but they give another ``data_hash``, so records of different texts are never mistaken for one
another.

Characters are encoded with a fixed vocabulary of :data:`VOCAB_SIZE` = 97 symbols: newline, the
95 printable ASCII characters and one symbol for anything else. The encoded stream is cut into
blocks of ``block`` characters (4096); block ``i`` goes to validation if ``i % 10 == 8``, to test
if ``i % 10 == 9`` and to training otherwise (80 / 10 / 10, contiguous chunks, the same for every
seed). A training epoch takes the windows of ``context + 1`` characters starting at a random
offset (seeded by run seed and epoch) and every ``context`` characters after it, in random order;
the model predicts each next character. Evaluation uses the first ``eval_chars`` characters of
each split cut into non-overlapping windows of ``context`` characters (position ``j`` of a
window is predicted from the ``j`` characters before it in the window) and reports, per split,
the mean negative log-likelihood in nats (``*_loss``), bits per character (``*_bpc`` =
``*_loss / ln 2``) and next-character accuracy (``*_acc``).

Model: :class:`CharTransformer`, a causal pre-LayerNorm transformer (token and learned position
embeddings, ``n_layers`` blocks of :mod:`geoptim.bench.tasks._transformer`, final LayerNorm,
linear read-out).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from geoptim.bench.data import tensors_hash
from geoptim.bench.tasks._transformer import Block
from geoptim.bench.tasks.base import TrainableTask, option

STDLIB_FILES = (
    "argparse.py",
    "calendar.py",
    "configparser.py",
    "csv.py",
    "difflib.py",
    "fractions.py",
    "heapq.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "tokenize.py",
)
REFERENCE_PYTHON = "3.11.7"
REFERENCE_SHA256 = {
    "argparse.py": "dc1eba8adfdf615986421f981337458ba1072d3e718a0f76e3224940fd74118b",
    "calendar.py": "b3b140864fd122a575ffcc9342b824fbe4f8a38fdf3f4fcd964f26e52725358f",
    "configparser.py": "4a70cecccb55031a413b79e6ced2e63ca031f770cd25a4882980ecdeab67f6ff",
    "csv.py": "6c68a5186e3b85e6e267a7ef96479327a45ae2b40bf5e9f2017e4b2282b3f5b1",
    "difflib.py": "0c6afc23568d55b3e9ac914f9c5361e3033e778aa5b58d3cc82835fc5c638679",
    "fractions.py": "b11e850e354808b882d13a70a911c29accd1dbdd41757566704e3b7206c74edb",
    "heapq.py": "6d43277e5c76fc0f073cd388fcff852d14d068f6bb6d4886c340f8b75a1229a9",
    "shlex.py": "42ab6060f316e121e374e6621d8c1c98b8db323903c3df289a810c45a8ae46a7",
    "statistics.py": "889a066f1b8063e73387ceb84018efc507a89b365b56c6afb9cc15b2ed25c2d9",
    "string.py": "24aeae1f0526250f442022022bf98df9a823b1cb330543ee79e70e44907462e9",
    "textwrap.py": "62867e40cdea6669b361f72af4d7daf0359f207c92cbeddfc7c7506397c1f31c",
    "tokenize.py": "79aa94ebe1761811ea9b2da2ada409a8cb9abd7c6eac241d0c181a36684bb609",
}
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(VOCAB) + 1  # the last symbol stands for every other character
SPLIT_PERIOD, VAL_BLOCK, TEST_BLOCK = 10, 8, 9

Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Text and splits


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def read_stdlib_text(files: tuple[str, ...] = STDLIB_FILES) -> tuple[str, dict[str, str]]:
    """The files' text (UTF-8, concatenated in order) and ``{file: SHA-256 of its bytes}``."""
    texts, hashes = [], {}
    for name in files:
        raw = (stdlib_dir() / name).read_bytes()
        hashes[name] = hashlib.sha256(raw).hexdigest()
        texts.append(raw.decode("utf-8"))
    return "".join(texts), hashes


_CODES = {ch: i for i, ch in enumerate(VOCAB)}


def encode(text: str) -> torch.Tensor:
    """int64 codes of ``text`` in the fixed vocabulary (:data:`VOCAB`, then "other")."""
    other = VOCAB_SIZE - 1
    return torch.tensor([_CODES.get(ch, other) for ch in text], dtype=torch.int64)


def split_blocks(stream: torch.Tensor, block: int) -> tuple[torch.Tensor, ...]:
    """``(train, val, test)``: the contiguous ``block``-character chunks of ``stream`` with index
    ``i % 10`` not in ``{8, 9}``, ``== 8`` and ``== 9``, each concatenated in order."""
    chunks = stream.split(block)
    parts: tuple[list[torch.Tensor], ...] = ([], [], [])
    for i, chunk in enumerate(chunks):
        phase = i % SPLIT_PERIOD
        parts[1 if phase == VAL_BLOCK else 2 if phase == TEST_BLOCK else 0].append(chunk)
    return tuple(torch.cat(part) for part in parts)


@functools.lru_cache(maxsize=2)
def stdlib_splits(block: int = 4096) -> tuple[tuple[torch.Tensor, ...], dict[str, str]]:
    """:func:`split_blocks` of the encoded standard-library text, and the files' hashes."""
    text, hashes = read_stdlib_text()
    return split_blocks(encode(text), block), hashes


def windows(stream: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """``stream[s : s + length]`` for every ``s`` in ``starts``, stacked."""
    return stream[starts[:, None] + torch.arange(length, device=stream.device)]


def bits_per_char(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean next-character negative log-likelihood in bits: ``CE(logits, targets) / ln 2``
    (logits ``... x V``, integer targets ``...``)."""
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    return float(nats) / math.log(2.0)


class CharData:
    """Token streams with the ``TaskData`` interface (see module doc for batches and metrics)."""

    def __init__(
        self,
        train: torch.Tensor,
        val: torch.Tensor,
        test: torch.Tensor,
        *,
        context: int,
        batch_size: int,
        seed: int,
        eval_chars: int,
    ) -> None:
        self.streams = {"train": train, "val": val, "test": test}
        self.context, self.batch_size, self.seed = context, batch_size, seed
        self.eval_chars = eval_chars
        self.n_windows = (len(train) - 1) // context - 1  # windows at any offset < context

    def to(self, device: torch.device) -> CharData:
        self.streams = {name: s.to(device) for name, s in self.streams.items()}
        return self

    @property
    def steps_per_epoch(self) -> int:
        return self.n_windows // self.batch_size

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        offset = int(torch.randint(self.context, (1,), generator=gen))
        order = torch.randperm(self.n_windows, generator=gen)
        stream = self.streams["train"]
        for first in range(0, self.steps_per_epoch * self.batch_size, self.batch_size):
            starts = offset + self.context * order[first : first + self.batch_size]
            chunk = windows(stream, starts.to(stream.device), self.context + 1)
            yield chunk[:, :-1], chunk[:, 1:]

    def hessian_batch(self, n: int) -> Batch:
        """The first ``n`` training windows at offset 0: the same batch every call."""
        starts = self.context * torch.arange(n, device=self.streams["train"].device)
        chunk = windows(self.streams["train"], starts, self.context + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def data_hash(self) -> str:
        """:func:`geoptim.bench.data.tensors_hash` of the three encoded streams."""
        return tensors_hash(self.streams)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        metrics = {}
        for name, stream in self.streams.items():
            n = min(self.eval_chars, len(stream) - 1) // self.context
            starts = self.context * torch.arange(n, device=stream.device)
            chunk = windows(stream, starts, self.context + 1)
            logits, targets = model(chunk[:, :-1]), chunk[:, 1:]
            bpc = bits_per_char(logits, targets)
            metrics[f"{name}_loss"] = bpc * math.log(2.0)
            metrics[f"{name}_bpc"] = bpc
            metrics[f"{name}_acc"] = (logits.argmax(-1) == targets).float().mean().item()
        model.train(was_training)
        return metrics


# --------------------------------------------------------------------------------------------
# Model


class CharTransformer(nn.Module):
    """Causal transformer over character codes: ``(batch, T)`` int64 -> ``(batch, T, V)`` logits,
    ``T <= context``. Parameters: ``V d + context d`` (embeddings), ``n_layers`` blocks,
    ``2 d`` (final LayerNorm) and ``d V + V`` (read-out)."""

    def __init__(
        self, vocab: int, context: int, d_model: int, n_heads: int, n_layers: int, d_mlp: int
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(torch.zeros(context, d_model))
        self.blocks = nn.Sequential(
            *(Block(d_model, n_heads, d_mlp, causal=True) for _ in range(n_layers))
        )
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.tokens(codes) + self.positions[: codes.shape[1]]
        return self.head(self.ln(self.blocks(h)))


# --------------------------------------------------------------------------------------------
# Task


@dataclasses.dataclass
class CharLMTask(TrainableTask):
    name: ClassVar[str] = "charlm"
    STEP_SECONDS: ClassVar[float] = 0.038
    EVAL_SECONDS: ClassVar[float] = 0.39
    TUNING_METRIC: ClassVar[str] = "-val_bpc"  # validation bits per character
    description: ClassVar[str] = (
        "character-level causal transformer on 12 standard-library modules (read at run time, "
        "hashes recorded); validation / test bits per character"
    )

    context: int = option(64, ge=1)
    d_model: int = option(64, ge=1)
    n_heads: int = option(4, ge=1)
    n_layers: int = option(2, ge=1)
    d_mlp: int = option(256, ge=1)
    batch_size: int = option(32, ge=1)
    block: int = option(4096, ge=1)
    eval_chars: int = option(16384, ge=1)

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {
            "quick": {"steps": 400, "eval_every": 100},
            "standard": {"steps": 1500, "eval_every": 250},
            "full": {"steps": 10000, "eval_every": 500},
        }

    def _build_model(self) -> nn.Module:
        return CharTransformer(
            VOCAB_SIZE, self.context, self.d_model, self.n_heads, self.n_layers, self.d_mlp
        )

    def make_data(self, seed: int) -> CharData:
        (train, val, test), _ = stdlib_splits(self.block)
        return CharData(
            train,
            val,
            test,
            context=self.context,
            batch_size=self.batch_size,
            seed=seed,
            eval_chars=self.eval_chars,
        )

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-character cross-entropy (nats) over every position of the batch."""
        return F.cross_entropy(outputs.flatten(0, 1), targets.flatten())

    def extra(self, result: dict[str, Any]) -> dict[str, Any]:
        _, hashes = stdlib_splits(self.block)
        return {
            "text_sha256": hashes,
            "text_is_reference": hashes == REFERENCE_SHA256,
            "python": platform.python_version(),
        }
