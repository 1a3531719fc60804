import math

import pytest
import torch
from torch import nn

import geoptim

REQUIRED = {
    "sgdm",
    "adamw",
    "lion",
    "adan",
    "lpsgd",
    "lpsgdm",
    "sepnorm",
    "ortsepnorm",
    "normsgd",
    "signum",
    "adamw_agr",
    "adan_agr",
}
# The only names whose defaults differ from their class's (as the README's registry table says):
# these are what the names mean.
NAME_DEFAULTS = {"sgdm": {"momentum": 0.9}, "signsgd": {"momentum": 0.0}}


def _options(optimizer: torch.optim.Optimizer) -> dict:
    return {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}


def test_registry_has_every_required_name_and_torch_baselines():
    assert set(geoptim.list_optimizers()) >= REQUIRED
    model = nn.Linear(2, 2)
    assert type(geoptim.create_optimizer(model, "sgdm", lr=0.1)) is torch.optim.SGD
    assert type(geoptim.create_optimizer(model, "adamw", lr=0.1)) is torch.optim.AdamW
    assert isinstance(geoptim.create_optimizer(model, "adamw_agr", lr=0.1), torch.optim.AdamW)


@pytest.mark.parametrize("name", geoptim.list_optimizers())
def test_registry_defaults_equal_the_class_defaults(name):
    cls = geoptim.get_optimizer_class(name)
    by_name = geoptim.create_optimizer([torch.zeros(2, requires_grad=True)], name)  # no lr
    by_class = cls([torch.zeros(2, requires_grad=True)], **NAME_DEFAULTS.get(name, {}))
    assert _options(by_name) == _options(by_class)


def test_adamw_keeps_torch_weight_decay_default_on_weights_and_none_on_biases():
    model = nn.Linear(3, 2)
    opt = geoptim.create_optimizer(model, "adamw")
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # torch's AdamW: 0.01
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]


def test_get_optimizer_class_binds_the_name_defaults_on_request():
    param = torch.zeros(1, requires_grad=True)
    assert geoptim.get_optimizer_class("sgdm") is torch.optim.SGD
    assert (
        geoptim.get_optimizer_class("SGDM", bind_defaults=True)([param]).defaults["momentum"] == 0.9
    )
    with pytest.raises(ValueError, match="unknown optimizer name 'lionn'"):
        geoptim.get_optimizer_class("lionn")


def test_register_optimizer_and_list_with_descriptions():
    from geoptim import registry

    try:
        geoptim.register_optimizer(
            "test_rmsprop", torch.optim.RMSprop, {"alpha": 0.9}, "RMSprop with alpha 0.9"
        )
        opt = geoptim.create_optimizer(nn.Linear(2, 2), "test_rmsprop", lr=0.5)
        assert type(opt) is torch.optim.RMSprop
        assert opt.param_groups[0]["alpha"] == 0.9 and opt.param_groups[0]["lr"] == 0.5
        described = dict(geoptim.list_optimizers(with_description=True))
        assert described["test_rmsprop"] == "RMSprop with alpha 0.9"
        assert all(described[name] for name in REQUIRED)
        assert geoptim.list_optimizers("rmsprop") == ["test_rmsprop"]
        with pytest.raises(ValueError, match="already registered"):
            geoptim.register_optimizer("test_rmsprop", torch.optim.RMSprop)
        geoptim.register_optimizer("test_rmsprop", torch.optim.Adam, overwrite=True)
        assert geoptim.get_optimizer_class("test_rmsprop") is torch.optim.Adam
    finally:
        registry._REGISTRY.pop("test_rmsprop", None)
    with pytest.raises(ValueError, match="optimizer name"):
        geoptim.register_optimizer("bad name", torch.optim.SGD)


def test_param_groups_exempt_biases_and_norm_weights_from_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model[3].bias.requires_grad_(False)
    groups = geoptim.param_groups(model, weight_decay=0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(model[0].weight), id(model[3].weight)}
    assert no_decay == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.1, 0.0)
    opt = geoptim.create_optimizer(model, "lion", lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    # the switch off: one group, every parameter decayed
    (everything,) = geoptim.param_groups(model, 0.1, exclude_bias_and_norm=False)
    assert len(everything["params"]) == 5 and everything["weight_decay"] == 0.1


class _TinyViT(nn.Module):
    """timm-style: a position embedding and a class token exempted by ``no_weight_decay()``."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.embed = nn.Linear(8, 8)
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


def _decay_of(groups) -> dict[int, float]:
    return {id(p): g.get("weight_decay") for g in groups for p in g["params"]}


def test_param_groups_honour_no_weight_decay_method_and_name_list():
    model = _TinyViT()
    decay = _decay_of(geoptim.param_groups(model, 0.05, no_weight_decay=["blocks.2"]))
    assert decay[id(model.pos_embed)] == decay[id(model.cls_token)] == 0.0  # 3-D, yet exempt
    assert decay[id(model.blocks[2].weight)] == 0.0  # a module name covers its parameters
    assert decay[id(model.blocks[0].weight)] == decay[id(model.head.weight)] == 0.05
    assert decay[id(model.blocks[1].weight)] == 0.0  # LayerNorm weight, ndim 1
    # weight_decay=None leaves the key out, so the optimizer's own default applies
    opt = geoptim.create_optimizer(model, "adamw")
    assert _decay_of(opt.param_groups)[id(model.head.weight)] == 0.01
    assert _decay_of(opt.param_groups)[id(model.pos_embed)] == 0.0


def test_layer_decay_scales_lr_geometrically_towards_the_input():
    model = _TinyViT()  # top-level children: embed (0), blocks (1), head (2); root params: 0
    gamma, lr = 0.5, 0.1
    opt = geoptim.create_optimizer(model, "sgdm", lr=lr, weight_decay=1e-4, layer_decay=gamma)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.head.weight)] == lr
    assert lr_of[id(model.blocks[0].weight)] == lr_of[id(model.blocks[1].bias)] == lr * gamma
    assert lr_of[id(model.embed.weight)] == lr_of[id(model.pos_embed)] == lr * gamma**2
    assert _decay_of(opt.param_groups)[id(model.pos_embed)] == 0.0
    # without lr, the scales multiply the class's default learning rate (SGD: 1e-3)
    opt = geoptim.create_optimizer(model, "sgd", layer_decay=gamma)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.embed.weight)] == pytest.approx(1e-3 * gamma**2)
    # a custom layer assignment: each block its own layer
    groups = geoptim.param_groups(
        model,
        lr=1.0,
        layer_decay=gamma,
        layer_of=lambda n: int(n.split(".")[1]) if "blocks" in n else 0,
    )
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(model.blocks[2].weight)] == 1.0 and scale[id(model.blocks[0].weight)] == 0.25
    assert math.isclose(scale[id(model.head.weight)], 0.25)
    with pytest.raises(ValueError, match="layer_decay"):
        geoptim.param_groups(model, layer_decay=1.5)


def test_create_optimizer_passes_kwargs_over_defaults():
    opt = geoptim.create_optimizer([torch.zeros(1, requires_grad=True)], "signsgd", lr=0.1)
    assert opt.param_groups[0]["momentum"] == 0.0
    opt = geoptim.create_optimizer(
        [torch.zeros(1, requires_grad=True)], "sgdm", lr=0.1, momentum=0.5
    )
    assert opt.param_groups[0]["momentum"] == 0.5
