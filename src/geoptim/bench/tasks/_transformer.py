"""The pre-LayerNorm transformer block shared by the ``charlm`` and ``vit`` tasks.

One block maps ``x`` (``batch x tokens x d_model``) to

.. math::

    x' = x + \\mathrm{Attn}(\\mathrm{LN}_1(x)), \\qquad
    x'' = x' + W_2\\, \\mathrm{GELU}(W_1 \\mathrm{LN}_2(x') + b_1) + b_2,

with multi-head scaled dot-product self-attention (``n_heads`` heads of ``d_model / n_heads``
dimensions; causal for the language model) and an MLP of width ``d_mlp``. Its parameters: two
LayerNorms (``4 d``), the fused query/key/value projection (``3 d^2 + 3 d``), the output projection
(``d^2 + d``) and the MLP (``2 d m + m + d``), in all ``4 d^2 + 2 d m + 9 d + m``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection; ``causal`` masks the future."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.causal = n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, d_model = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.n_heads, d_model // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each batch x heads x tokens x head_dim
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, d_model))


class Block(nn.Module):
    """``x + Attn(LN(x))`` then ``+ MLP(LN(.))`` (see module doc)."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, causal: bool) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, causal)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))
