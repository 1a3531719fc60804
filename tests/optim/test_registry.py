import torch

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


def test_registry_has_every_required_name_and_torch_baselines():
    assert set(geoptim.list_optimizers()) >= REQUIRED
    model = torch.nn.Linear(2, 2)
    assert type(geoptim.create_optimizer(model, "sgdm", lr=0.1)) is torch.optim.SGD
    assert type(geoptim.create_optimizer(model, "adamw", lr=0.1)) is torch.optim.AdamW
    assert isinstance(geoptim.create_optimizer(model, "adamw_agr", lr=0.1), torch.optim.AdamW)


def test_param_groups_exempt_biases_and_norm_weights_from_decay():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    model[3].bias.requires_grad_(False)
    groups = geoptim.param_groups(model, weight_decay=0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(model[0].weight), id(model[3].weight)}
    assert no_decay == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.1, 0.0)
    opt = geoptim.create_optimizer(model, "lion", lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_create_optimizer_passes_kwargs_over_defaults():
    opt = geoptim.create_optimizer([torch.zeros(1, requires_grad=True)], "signsgd", lr=0.1)
    assert opt.param_groups[0]["momentum"] == 0.0
    opt = geoptim.create_optimizer(
        [torch.zeros(1, requires_grad=True)], "sgdm", lr=0.1, momentum=0.5
    )
    assert opt.param_groups[0]["momentum"] == 0.5
