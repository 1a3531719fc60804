"""A tiny vision transformer on ``sklearn``'s 8x8 digits (analog of the SepNorm paper's ViT table
and the AGR paper's TinyViT runs, at CPU scale).

Data: the digits splits of :func:`geoptim.bench.data.load_digits_split` (fixed and stratified:
1047 train / 300 validation / 450 test images, pixels standardised with the training statistics;
``n_train`` and ``label_noise`` make the training set smaller and noisier as in the ``digits``
task, by default it is the whole clean one). Model: :class:`TinyViT` cuts each image into
``(8 / patch)^2`` patches of ``patch x patch`` pixels (16 patches of 2x2 by default), embeds each
linearly, prepends a learned class token, adds learned position embeddings, applies ``n_layers``
non-causal pre-LayerNorm blocks (:mod:`geoptim.bench.tasks._transformer`) and reads the class
from the class token after a final LayerNorm. Mini-batches of ``batch_size`` (64); NLL and top-1
accuracy after every epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from geoptim.bench.data import TensorData, load_digits_split
from geoptim.bench.tasks._transformer import Block
from geoptim.bench.tasks.base import TrainableTask, option


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, (H / patch) (W / patch), C patch^2)``: the non-overlapping
    patches in row-major order, each flattened channel-first."""
    n, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {patch}")
    grid = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch**2)


class TinyViT(nn.Module):
    """``(N, C, H, W)`` images -> ``(N, num_classes)`` logits (see module doc). Parameters:
    ``(C p^2 + 1) d`` (patch embedding), ``d`` (class token), ``(P + 1) d`` (positions, ``P``
    patches), the blocks, ``2 d`` (final LayerNorm) and ``(d + 1) num_classes`` (head)."""

    def __init__(
        self,
        image_size: int = 8,
        channels: int = 1,
        patch: int = 2,
        num_classes: int = 10,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_mlp: int = 128,
    ) -> None:
        super().__init__()
        self.patch = patch
        n_patches = (image_size // patch) ** 2
        self.embed = nn.Linear(channels * patch**2, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.positions = nn.Parameter(torch.zeros(n_patches + 1, d_model))
        self.blocks = nn.Sequential(
            *(Block(d_model, n_heads, d_mlp, causal=False) for _ in range(n_layers))
        )
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(patchify(images, self.patch))
        cls = self.cls_token.expand(len(tokens), -1, -1)
        h = self.blocks(torch.cat([cls, tokens], dim=1) + self.positions)
        return self.head(self.ln(h[:, 0]))


@dataclasses.dataclass
class ViTTask(TrainableTask):
    name: ClassVar[str] = "vit"
    STEP_SECONDS: ClassVar[float] = 0.015
    EVAL_SECONDS: ClassVar[float] = 0.14
    description: ClassVar[str] = (
        "sklearn 8x8 digits, tiny ViT (2x2 patches, class token, 2 blocks), mini-batches; "
        "NLL / top-1 per epoch"
    )

    patch: int = option(2, choices=(1, 2, 4, 8))
    d_model: int = option(64, ge=1)
    n_heads: int = option(4, ge=1)
    n_layers: int = option(2, ge=1)
    d_mlp: int = option(128, ge=1)
    batch_size: int = option(64, ge=1)
    n_train: int | None = option(None, ge=10)
    label_noise: float = option(0.0, ge=0, lt=1)
    split_seed: int = option(0, ge=0)

    def _budgets(self) -> dict[str, dict[str, Any]]:
        return {"quick": {"epochs": 20}, "standard": {"epochs": 50}, "full": {"epochs": 200}}

    def _build_model(self) -> nn.Module:
        return TinyViT(8, 1, self.patch, 10, self.d_model, self.n_heads, self.n_layers, self.d_mlp)

    def make_data(self, seed: int) -> TensorData:
        splits = load_digits_split(self.n_train, self.label_noise, self.split_seed)
        return TensorData.from_splits(splits, batch_size=self.batch_size, seed=seed)
