"""Every registry optimizer trains a small MLP on a fixed problem (a smoke test: the exact
tests are elsewhere)."""

import pytest
import torch

import geoptim

# OrtSepNorm's steps are orthogonal to the weights, so a norm grows only by lr^2 * n per step:
# it needs a larger lr than SepNorm to reach a useful scale in 300 steps.
LEARNING_RATES = {
    "sgd": 0.5,
    "sgdm": 0.1,
    "lpsgd": 0.1,
    "lpsgdm": 0.05,
    "normsgd": 0.1,
    "ortsepnorm": 0.03,
}
TARGET_LOSS = 0.1  # initial loss ~1.1 (3 balanced classes)


@pytest.mark.parametrize("name", geoptim.list_optimizers())
def test_trains_small_mlp_below_target(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = geoptim.create_optimizer(
        model, name, lr=LEARNING_RATES.get(name, 1e-2), weight_decay=1e-4
    )
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < TARGET_LOSS, (name, loss.item())
