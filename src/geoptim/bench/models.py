"""The benchmark's models.

* Grokking (modular addition ``(a + b) mod p``): :class:`GrokMLP` (embed ``a`` and ``b``,
  concatenate, one hidden ReLU layer; fast) and :class:`GrokTransformer` (the one-layer,
  LayerNorm-free transformer of Nanda et al. / Omnigrok: tokens ``[a, b, =]``, d_model 128,
  4 heads, d_mlp 512, logits read at the ``=`` position).
* ``sklearn`` digits (1 x 8 x 8): :class:`DigitsResNet` (two BasicBlocks) and :class:`DigitsVGG`,
  both with BatchNorm and a selectable activation (``"relu"`` or ``"leaky_relu"``).
* MNIST-1D (1 x 40): :class:`MNIST1DCNN`, a three-layer 1-D CNN.
* CIFAR (3 x 32 x 32): the usual CIFAR variants of ResNet-18, ResNet-50 (bottleneck) and VGG-11
  with BatchNorm: a 3x3 stem without max-pooling, four stages of width 64-128-256-512 (times 4 for
  the bottleneck), global average pooling and one linear layer. For 10 classes ResNet-18 has
  11,173,962 parameters, ResNet-50 23,520,842 and VGG-11 9,231,114. ResNet-101 (bottlenecks
  [3, 4, 23, 3]) is the AGR paper's fourth CIFAR-100 model. The same models serve Tiny-ImageNet
  (3 x 64 x 64, 200 classes): the stem is kept at stride 1, so the last stage sees 8 x 8 maps.
* ImageNet (3 x 224 x 224): ResNet-50/101 with the 7x7 stride-2 stem and 3x3 max-pooling, and
  VGG-11-BN with its 7x7 average pooling and three-layer classifier (4096-4096, dropout 0.5); for
  1000 classes they have 25,557,032, 44,549,160 and 132,868,840 parameters (the usual counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = ("relu", "leaky_relu")


def make_activation(name: str) -> nn.Module:
    """``"relu"`` or ``"leaky_relu"`` (negative slope 0.01)."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


# --------------------------------------------------------------------------------------------
# Grokking


class GrokMLP(nn.Module):
    """``logits = W2 act(W1 [E a, E b] + b1) + b2`` with one embedding table ``E`` (``p x d_embed``)
    shared by both operands. Input: integer tensor ``(batch, 2)`` holding ``a`` and ``b``."""

    def __init__(self, p: int = 113, d_embed: int = 32, width: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(p, d_embed)
        self.hidden = nn.Linear(2 * d_embed, width)
        self.act = nn.ReLU()
        self.out = nn.Linear(width, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(1)
        return self.out(self.act(self.hidden(h)))


class GrokTransformer(nn.Module):
    """One causal attention layer and one ReLU MLP, both residual, no LayerNorm.

    Tokens are ``[a, b, p]`` (``p`` is the ``=`` token, so the vocabulary has ``p + 1`` entries);
    learned positional embeddings; the logits over the ``p`` residues come from the last position.
    Input: integer tensor ``(batch, 2)`` holding ``a`` and ``b``; the ``=`` token is appended here.
    """

    def __init__(
        self, p: int = 113, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.p = p
        self.n_heads = n_heads
        self.embed = nn.Embedding(p + 1, d_model)
        self.pos = nn.Parameter(torch.randn(3, d_model) / d_model**0.5)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.attn_out = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d_model))
        self.unembed = nn.Linear(d_model, p, bias=False)
        self.register_buffer("causal", torch.ones(3, 3, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eq = torch.full_like(x[:, :1], self.p)
        h = self.embed(torch.cat([x, eq], dim=1)) + self.pos  # (B, 3, d)
        batch, seq, d_model = h.shape
        q, k, v = self.qkv(h).view(batch, seq, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        attn = scores.masked_fill(~self.causal, float("-inf")).softmax(-1)
        h = h + self.attn_out((attn @ v).transpose(1, 2).reshape(batch, seq, d_model))
        h = h + self.mlp(h)
        return self.unembed(h[:, -1])


# --------------------------------------------------------------------------------------------
# Residual and VGG building blocks


class BasicBlock(nn.Module):
    """``act(BN(conv3x3(act(BN(conv3x3 x)))) + shortcut(x))``; the shortcut is a 1x1 conv + BN
    when the shape changes."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act1 = make_activation(activation)
        self.act2 = make_activation(activation)
        self.shortcut = _shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BN; residual sum then activation."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            make_activation(activation),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes),
            make_activation(activation),
            nn.Conv2d(planes, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.act = make_activation(activation)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """Stem, stages of residual blocks (the first block of every stage after the first has stride
    2), global average pooling, linear classifier. ``stem="cifar"``: 3x3 conv + BN + activation;
    ``"imagenet"``: 7x7 stride-2 conv + BN + activation + 3x3 stride-2 max-pooling (/4)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        activation: str = "relu",
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown stem {stem!r}; known: cifar, imagenet")
        big = stem == "imagenet"
        self.stem = nn.Sequential(
            nn.Conv2d(
                in_channels,
                widths[0],
                7 if big else 3,
                2 if big else 1,
                3 if big else 1,
                bias=False,
            ),
            nn.BatchNorm2d(widths[0]),
            make_activation(activation),
            *([nn.MaxPool2d(3, 2, 1)] if big else []),
        )
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, (n, planes) in enumerate(zip(num_blocks, widths, strict=True)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(block(c_in, planes, stride, activation))
                c_in = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


class VGG(nn.Module):
    """``cfg`` lists conv widths (3x3, padding 1, with bias, BN, activation) and ``"M"`` for 2x2
    max-pooling; then flatten and one linear classifier (``hidden=()``), or, for ImageNet,
    ``hidden=(4096, 4096)``: 7x7 adaptive average pooling and linear-activation-dropout(0.5)
    layers of those widths before the classifier."""

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int,
        in_channels: int = 3,
        spatial: int = 32,
        activation: str = "relu",
        hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                spatial //= 2
            else:
                assert isinstance(item, int)
                layers += [
                    nn.Conv2d(c_in, item, 3, padding=1),
                    nn.BatchNorm2d(item),
                    make_activation(activation),
                ]
                c_in = item
        if hidden:
            layers.append(nn.AdaptiveAvgPool2d(7))
            spatial = 7
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        width = c_in * spatial * spatial
        for size in hidden:
            head += [nn.Linear(width, size), make_activation(activation), nn.Dropout(0.5)]
            width = size
        self.fc = (
            nn.Sequential(*head, nn.Linear(width, num_classes))
            if hidden
            else nn.Linear(width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


# --------------------------------------------------------------------------------------------
# Concrete models


def resnet18(num_classes: int = 10, activation: str = "relu") -> ResNet:
    """CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2], widths 64-512."""
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, 3, activation)


def resnet50(num_classes: int = 10, activation: str = "relu") -> ResNet:
    """CIFAR ResNet-50: Bottlenecks [3, 4, 6, 3], widths 64-512 (outputs 256-2048)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, 3, activation)


def resnet101(num_classes: int = 10, activation: str = "relu") -> ResNet:
    """CIFAR ResNet-101: Bottlenecks [3, 4, 23, 3], widths 64-512 (outputs 256-2048)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], [64, 128, 256, 512], num_classes, 3, activation)


VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11(num_classes: int = 10, activation: str = "relu", spatial: int = 32) -> VGG:
    """CIFAR VGG-11 with BN: eight convs, five poolings (32 -> 1), linear 512 -> classes; at
    ``spatial`` 64 (Tiny-ImageNet) the linear layer reads 512 x 2 x 2."""
    return VGG(VGG11_CFG, num_classes, 3, spatial, activation)


CIFAR_MODELS = {"resnet18": resnet18, "resnet50": resnet50, "resnet101": resnet101, "vgg11": vgg11}
"""The CIFAR (and Tiny-ImageNet) models by name: ``CIFAR_MODELS[name](num_classes, activation)``."""

BOTTLENECK_DEPTHS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}


def imagenet_model(name: str, num_classes: int = 1000, activation: str = "relu") -> nn.Module:
    """ImageNet-size ``"resnet50"``, ``"resnet101"`` (7x7 stem) or ``"vgg11"`` (VGG-11-BN with
    the 4096-4096 classifier)."""
    if name == "vgg11":
        return VGG(VGG11_CFG, num_classes, 3, 224, activation, hidden=(4096, 4096))
    if name not in BOTTLENECK_DEPTHS:
        raise ValueError(f"unknown ImageNet model {name!r}; known: {', '.join(IMAGENET_MODELS)}")
    widths = [64, 128, 256, 512]
    return ResNet(
        Bottleneck, BOTTLENECK_DEPTHS[name], widths, num_classes, 3, activation, "imagenet"
    )


IMAGENET_MODELS = ("resnet50", "resnet101", "vgg11")


class DigitsResNet(ResNet):
    """For 1 x 8 x 8 digits: stem to ``width``, BasicBlock(width), BasicBlock(2*width, stride 2)
    (8x8 -> 4x4), average pooling, linear to 10 classes."""

    def __init__(self, width: int = 16, activation: str = "relu", num_classes: int = 10) -> None:
        super().__init__(BasicBlock, [1, 1], [width, 2 * width], num_classes, 1, activation)


class DigitsVGG(VGG):
    """For 1 x 8 x 8 digits: [w, w, M, 2w, 2w, M] (8x8 -> 2x2), linear to 10 classes."""

    def __init__(self, width: int = 16, activation: str = "relu", num_classes: int = 10) -> None:
        cfg = (width, width, "M", 2 * width, 2 * width, "M")
        super().__init__(cfg, num_classes, 1, 8, activation)


class MNIST1DCNN(nn.Module):
    """Three 1-D conv layers (kernel 5, padding 2, the last two with stride 2; ReLU), flatten
    (``length / 4`` positions) and a linear layer. Input ``(batch, 1, length)``."""

    def __init__(self, channels: int = 32, length: int = 40, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2),
            nn.ReLU(),
        )
        self.fc = nn.Linear(channels * ((length + 3) // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# GPU training options

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}


class Accelerated(nn.Module):
    """``net`` trained the way GPUs train it: with ``channels_last`` the weights and every input
    batch are in NHWC memory order; with ``amp="bf16"`` the forward pass runs under
    ``torch.autocast`` (bfloat16 matmuls and convolutions, float32 weights, so the optimizer steps
    in float32) and the output is returned as float32, so the loss is computed in float32."""

    def __init__(self, net: nn.Module, amp: str = "none", channels_last: bool = False) -> None:
        super().__init__()
        if amp not in AMP_DTYPES:
            raise ValueError(f"unknown amp {amp!r}; known: {', '.join(AMP_DTYPES)}")
        self.net, self.amp, self.channels_last = net, amp, channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = AMP_DTYPES[self.amp]
        if dtype is None:
            return self.net(x)
        with torch.autocast(x.device.type, dtype=dtype):
            return self.net(x).float()


def accelerate(
    net: nn.Module, amp: str = "none", channels_last: bool = False, compile: bool = False
) -> nn.Module:
    """``net`` itself when every option is off (so default runs build the very same module),
    else :class:`Accelerated`; ``compile`` compiles the model in place (``nn.Module.compile``,
    parameter names unchanged)."""
    model = net if amp == "none" and not channels_last else Accelerated(net, amp, channels_last)
    if compile:
        model.compile()
    return model
