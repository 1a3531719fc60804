"""The benchmark models: output shapes, parameter counts against hand counts, activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geoptim.bench import models
from geoptim.bench.models import count_params


def _conv(c_in: int, c_out: int, k: int, bias: bool = False) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def _bn(c: int) -> int:
    return 2 * c


def _resnet18_count(num_classes: int) -> int:
    """CIFAR ResNet-18 counted from its definition (He et al. 2016, 3x3 stem, no max-pool)."""
    total = _conv(3, 64, 3) + _bn(64)
    c_in = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            total += _conv(c_in, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
            if s != 1 or c_in != planes:
                total += _conv(c_in, planes, 1) + _bn(planes)
            c_in = planes
    return total + 512 * num_classes + num_classes


def _resnet50_count(num_classes: int) -> int:
    total = _conv(3, 64, 3) + _bn(64)
    c_in = 64
    for planes, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(n):
            s = stride if block == 0 else 1
            out = 4 * planes
            total += _conv(c_in, planes, 1) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
            total += _conv(planes, out, 1) + _bn(out)
            if s != 1 or c_in != out:
                total += _conv(c_in, out, 1) + _bn(out)
            c_in = out
    return total + 2048 * num_classes + num_classes


def _vgg11_count(num_classes: int) -> int:
    widths = [64, 128, 256, 256, 512, 512, 512, 512]
    total, c_in = 0, 3
    for c in widths:
        total += _conv(c_in, c, 3, bias=True) + _bn(c)
        c_in = c
    return total + 512 * num_classes + num_classes


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_param_counts(num_classes: int) -> None:
    assert count_params(models.resnet18(num_classes)) == _resnet18_count(num_classes)
    assert count_params(models.resnet50(num_classes)) == _resnet50_count(num_classes)
    assert count_params(models.vgg11(num_classes)) == _vgg11_count(num_classes)


def test_cifar_param_counts_known_values() -> None:
    # the figures quoted for the standard CIFAR implementations (10 classes)
    assert _resnet18_count(10) == 11_173_962
    assert _resnet50_count(10) == 23_520_842
    assert _vgg11_count(10) == 9_231_114


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11"])
def test_cifar_output_shapes(name: str) -> None:
    model = models.CIFAR_MODELS[name](num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_small_models_shapes() -> None:
    pairs = torch.randint(0, 113, (5, 2))
    assert models.GrokMLP(113, 32, 128)(pairs).shape == (5, 113)
    assert models.GrokTransformer()(pairs).shape == (5, 113)
    assert models.DigitsResNet()(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert models.DigitsVGG()(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert models.MNIST1DCNN()(torch.randn(3, 1, 40)).shape == (3, 10)


def test_grok_transformer_matches_canonical_size() -> None:
    model = models.GrokTransformer(p=113, d_model=128, n_heads=4, d_mlp=512)
    embed, pos, attn = 114 * 128, 3 * 128, 4 * 128 * 128
    mlp, unembed = 128 * 512 + 512 + 512 * 128 + 128, 128 * 113
    assert count_params(model) == embed + pos + attn + mlp + unembed
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())


def test_grok_transformer_reads_both_operands() -> None:
    torch.manual_seed(0)
    model = models.GrokTransformer()
    x = torch.tensor([[3, 5]])
    base = model(x)
    assert not torch.allclose(base, model(torch.tensor([[4, 5]])))
    assert not torch.allclose(base, model(torch.tensor([[3, 6]])))


def test_grok_mlp_shares_the_embedding() -> None:
    model = models.GrokMLP(7, 4, 8)
    assert count_params(model) == 7 * 4 + (2 * 4 + 1) * 8 + (8 + 1) * 7


@pytest.mark.parametrize("factory", [models.DigitsResNet, models.DigitsVGG, models.resnet18])
def test_activation_choice(factory) -> None:
    leaky = factory(activation="leaky_relu")
    kinds = {type(m) for m in leaky.modules()}
    assert nn.LeakyReLU in kinds
    assert nn.ReLU not in kinds
    assert nn.BatchNorm2d in kinds
    assert nn.LeakyReLU not in {type(m) for m in factory().modules()}


def test_unknown_activation() -> None:
    with pytest.raises(ValueError, match="leaky_relu"):
        models.DigitsResNet(activation="gelu")
