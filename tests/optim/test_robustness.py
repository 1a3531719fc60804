"""Edge cases every optimizer must survive, torch.optim conventions, and clear errors."""

import math

import pytest
import torch

import geoptim
from tests.optim.cases import CASES, make_params


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("foreach", [False, True])
def test_no_nan_on_zero_gradients_zero_weights_and_single_elements(name, foreach):
    params = [
        torch.zeros(4, 3, requires_grad=True),
        torch.zeros(1, requires_grad=True),
        torch.full((2,), 3.0, requires_grad=True),
        torch.zeros(0, requires_grad=True),
    ]
    opt = CASES[name](params, foreach=foreach)
    for step in range(4):
        for i, p in enumerate(params):
            # step 0: all-zero gradients; afterwards non-zero except tensor 2 (zero again)
            p.grad = torch.zeros_like(p) if step == 0 or i == 2 else torch.ones_like(p) * step
        opt.step()
        for p in params:
            assert torch.isfinite(p).all(), (name, step)
        for state in opt.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    assert torch.isfinite(value).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_step_leaves_grad_unchanged_and_returns_closure_loss(name):
    params = make_params()
    opt = CASES[name](params)
    grads = [torch.randn_like(p) for p in params]

    def closure():
        for p, g in zip(params, grads):
            p.grad = g.clone()
        return torch.tensor(1.25)

    assert opt.step(closure).item() == 1.25
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize("name", geoptim.list_optimizers())
def test_per_group_hyper_parameters(name):
    """A group with lr 0 does not move; the other does."""
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = geoptim.create_optimizer([{"params": [a]}, {"params": [b], "lr": 0.0}], name, lr=0.1)
    a.grad, b.grad = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1.0, -2.0, 3.0])
    opt.step()
    assert not torch.equal(a, torch.ones(3))
    assert torch.equal(b, torch.ones(3))


@pytest.mark.parametrize("name", geoptim.list_optimizers())
def test_grad_scaler_and_lr_scheduler(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = geoptim.create_optimizer(model, name, lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 3 / 4)) / 2)
    # An inf gradient makes the scaler skip the step: parameters stay.
    frozen = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    next(model.parameters()).grad[0, 0] = math.inf
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.parameters()))


@pytest.mark.parametrize(
    "name",
    sorted(n for n in geoptim.list_optimizers() if n not in ("sgd", "sgdm", "adamw", "adamw_agr")),
)
def test_sparse_gradients_raise_at_step(name):
    p = torch.zeros(5, 2, requires_grad=True)
    opt = geoptim.create_optimizer([p], name, lr=0.1)
    p.grad = torch.sparse_coo_tensor([[0, 3]], torch.ones(2, 2), (5, 2))
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


BAD_ARGUMENTS = [
    (geoptim.LPSGDM, {"lr": -1.0}, "lr"),
    (geoptim.LPSGDM, {"lr": math.nan}, "lr"),
    (geoptim.LPSGDM, {"weight_decay": -0.1}, "weight_decay"),
    (geoptim.LPSGDM, {"weight_decay": math.inf}, "weight_decay"),
    (geoptim.LPSGDM, {"eps": -1e-8}, "eps"),
    (geoptim.LPSGDM, {"momentum": 1.0}, "momentum"),
    (geoptim.LPSGDM, {"momentum": -0.1}, "momentum"),
    (geoptim.LPSGDM, {"p": 1.5}, "p must be"),
    (geoptim.LPSGDM, {"p": math.nan}, "p must be"),
    (geoptim.LPSGDM, {"dampening": 2.0}, "dampening"),
    (geoptim.LPSGD, {"p": 1.0}, "p must be"),
    (geoptim.Lion, {"betas": (0.9, 1.0)}, r"betas\[1\]"),
    (geoptim.Lion, {"betas": (0.9,)}, "betas"),
    (geoptim.Lion, {"lr": math.inf}, "lr"),
    (geoptim.SepNorm, {"grouping": "layer"}, "grouping"),
    (geoptim.OrtSepNorm, {"grouping": "rows"}, "grouping"),
    (geoptim.SepNorm, {"eps": -1.0}, "eps"),
    (geoptim.NormSGD, {"weight_decay": -1.0}, "weight_decay"),
    (geoptim.Signum, {"momentum": 1.5}, "momentum"),
    (geoptim.Adan, {"betas": (0.98, 0.92)}, "betas"),
    (geoptim.Adan, {"betas": (0.98, 0.92, -0.1)}, r"betas\[2\]"),
    (geoptim.Adan, {"max_grad_norm": -1.0}, "max_grad_norm"),
    (geoptim.AdamWAGR, {"agr_until": -3}, "agr_until"),
    (geoptim.AdanAGR, {"agr_until": 2.5}, "agr_until"),
    (geoptim.Lion, {"foreach": "yes"}, "foreach"),
]


@pytest.mark.parametrize(("cls", "kwargs", "match"), BAD_ARGUMENTS)
def test_bad_arguments_raise_clear_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


def test_unknown_registry_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"known names: .*lion.*sepnorm"):
        geoptim.create_optimizer([torch.zeros(1, requires_grad=True)], "lionn", lr=0.1)


def test_p_infinity_is_allowed_and_means_sign():
    p = torch.zeros(3, requires_grad=True)
    opt = geoptim.LPSGD([p], lr=0.1, p=math.inf, eps=1e-12)
    p.grad = torch.tensor([2.0, -0.5, 0.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, 0.0]))


@pytest.mark.parametrize("name", ["lion", "signum", "signsgd"])
@pytest.mark.parametrize("kw", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_nan_gradient_shows_in_the_weights_like_torch(name, kw):
    """sign(NaN) is 0, which used to leave the weight finite while the momentum held NaN
    forever; the sign family now lets a NaN gradient show in the weight, as torch's SGD does."""
    grad = torch.tensor([math.nan, 1.0, -1.0, 0.0])
    p, q = torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)
    p.grad, q.grad = grad.clone(), grad.clone()
    CASES[name]([p], **kw).step()
    torch.optim.SGD([q], lr=0.1).step()
    assert torch.equal(p.isnan(), q.isnan())
    assert torch.isnan(p[0]) and torch.isfinite(p[1:]).all()
