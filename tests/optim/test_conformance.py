"""torch.optim conformance: one ``OptimizerInfo`` per geoptim optimizer (torch's own test database
type, from ``torch.testing._internal.common_optimizers``) and our versions of the generic checks
of pytorch's ``TestOptimRenewed`` (test/test_optim.py) that apply on CPU.

Every configuration runs with each implementation the info declares: ``foreach=False,
fused=False`` (single-tensor reference), ``foreach=True`` (multi-tensor) and ``fused=True`` (the
C kernels; accepted with ``foreach=False`` as torch does).
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable

import pytest
import torch
from torch.nn import Parameter
from torch.optim.optimizer import register_optimizer_step_pre_hook

import geoptim

common = pytest.importorskip("torch.testing._internal.common_optimizers")  # needs expecttest
# Importing torch's test utilities freezes the torch.backends flags (torch.backends.
# disable_global_flags, for torch's own suite); unfreeze them for the tests collected with this
# module (Lightning's Trainer sets cudnn flags).
torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
OptimizerInfo, OptimizerInput = common.OptimizerInfo, common.OptimizerInput
ErrorOptimizerInput, OptimizerErrorEnum = common.ErrorOptimizerInput, common.OptimizerErrorEnum

IMPLEMENTATIONS = {
    "for-loop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "fused": {"foreach": False, "fused": True},
}


def _inputs(*configs: tuple[str, dict]) -> Callable[..., list]:
    """An ``optim_inputs_func``: the defaults, weight decay, maximize and a tensor lr (at the
    first config's lr), then the optimizer's own options."""

    def optim_inputs(device=None, dtype=None):
        base = configs[0][1]
        lr = base.get("lr", 1e-3)
        common_inputs = [
            ("default", base),
            ("weight_decay", {**base, "weight_decay": 0.1}),
            ("maximize", {**base, "weight_decay": 0.1, "maximize": True}),
            ("tensor lr", {**base, "lr": torch.tensor(lr)}),
        ]
        return [
            OptimizerInput(params=None, kwargs=copy.deepcopy(kw), desc=desc)
            for desc, kw in common_inputs + list(configs[1:])
        ]

    return optim_inputs


def _errors(*own: tuple[dict, str]) -> Callable[..., list]:
    """torch's error inputs for every optimizer, then the optimizer's own (ValueErrors)."""

    def optim_error_inputs(device, dtype):
        param = Parameter(torch.randn(1, 1, device=device, dtype=dtype))
        ours = [
            ErrorOptimizerInput(
                OptimizerInput(params=[param], kwargs=kw, desc=match),
                error_type=ValueError,
                error_regex=match,
            )
            for kw, match in own
        ]
        return common.get_error_inputs_for_all_optims(device, dtype) + ours

    return optim_error_inputs


NOT_DIFFERENTIABLE = ({"differentiable": True}, "does not support differentiable=True")


def _info(cls: type, inputs: Callable, errors: Callable) -> OptimizerInfo:
    return OptimizerInfo(
        cls,
        optim_inputs_func=inputs,
        optim_error_inputs_func=errors,
        supported_impls=("foreach", "fused"),
        supports_fused_on=("cpu",),
        supports_complex=True,
    )


OPTIM_DB = [
    _info(
        geoptim.LPSGD,
        _inputs(
            ("", {"lr": 1e-2}),
            ("p 2", {"lr": 1e-2, "p": 2.0}),
            ("p inf", {"lr": 1e-3, "p": float("inf")}),
        ),
        _errors(({"p": 1.5}, "p must be"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.LPSGDM,
        _inputs(
            ("", {"lr": 1e-2}),
            ("heavy ball", {"lr": 1e-3, "dampening": 0.0, "p": 3.0}),
            ("p inf", {"lr": 1e-3, "p": float("inf")}),
        ),
        _errors(({"momentum": 1.0}, "momentum"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.Lion,
        _inputs(("", {"lr": 1e-3}), ("betas", {"lr": 1e-3, "betas": (0.5, 0.9)})),
        _errors(({"betas": (0.9, 1.0)}, r"betas\[1\]"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.SepNorm,
        _inputs(
            ("", {"lr": 1e-3}),
            ("element", {"lr": 1e-3, "grouping": "element"}),
            ("global", {"lr": 1e-3, "grouping": "global"}),
        ),
        _errors(({"grouping": "rows"}, "grouping"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.OrtSepNorm,
        _inputs(
            ("", {"lr": 1e-3}),
            ("global", {"lr": 1e-3, "grouping": "global", "weight_decay": 0.5}),
        ),
        _errors(({"eps": -1.0}, "eps"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.NormSGD,
        _inputs(("", {"lr": 1e-2}), ("no momentum", {"lr": 1e-2, "betas": (0.0, 0.0)})),
        _errors(({"weight_decay": -1.0}, "weight_decay"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.Signum,
        _inputs(("", {"lr": 1e-3}), ("signSGD", {"lr": 1e-3, "momentum": 0.0})),
        _errors(({"momentum": 1.5}, "momentum"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.Adan,
        _inputs(
            ("", {"lr": 1e-2}),
            ("no_prox", {"lr": 1e-2, "no_prox": True, "weight_decay": 0.02}),
            ("clip", {"lr": 1e-2, "max_grad_norm": 0.5}),
        ),
        _errors(({"betas": (0.9, 0.9)}, "betas"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.AdamWAGR,
        _inputs(
            ("", {"lr": 1e-2}),
            ("agr_until", {"lr": 1e-2, "agr_until": 3}),
            ("amsgrad", {"lr": 1e-2, "amsgrad": True}),
            ("first moment", {"lr": 1e-2, "moments": "first", "amsgrad": True}),
        ),
        _errors(({"agr_until": -1}, "agr_until"), NOT_DIFFERENTIABLE),
    ),
    _info(
        geoptim.AdanAGR,
        _inputs(
            ("", {"lr": 1e-2}),
            ("clip", {"lr": 1e-2, "max_grad_norm": 0.5, "agr_until": 4}),
            ("first moment", {"lr": 1e-2, "moments": "first", "max_grad_norm": 0.5}),
        ),
        _errors(({"agr_until": 2.5}, "agr_until"), NOT_DIFFERENTIABLE),
    ),
]

IDS = [info.name for info in OPTIM_DB]
optims = pytest.mark.parametrize("info", OPTIM_DB, ids=IDS)


def all_inputs(info: OptimizerInfo) -> list:
    """Every config with every implementation (what torch's
    ``_get_optim_inputs_including_global_cliquey_kwargs`` gives on a device with foreach
    kernels), minus what AdamW-AGR refuses: a tensor lr with ``foreach=True`` (torch's AdamW)
    and ``fused=True`` with ``moments="first"``."""
    inputs = []
    for optim_input in info.optim_inputs_func(device="cpu"):
        for impl, flags in IMPLEMENTATIONS.items():
            kwargs = {**copy.deepcopy(optim_input.kwargs), **flags}
            if info.optim_cls is geoptim.AdamWAGR and (
                (isinstance(kwargs["lr"], torch.Tensor) and kwargs["foreach"])
                or (kwargs.get("moments") == "first" and kwargs["fused"])
            ):
                continue  # refused: by torch's AdamW; AGR's first-moment variant is not fused
            inputs.append(OptimizerInput(None, kwargs, f"{optim_input.desc} & {impl}"))
    return inputs


def _linear_problem(dtype=torch.float32, contiguous=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if contiguous:
        weight = Parameter(torch.randn(10, 5, generator=gen, dtype=dtype))
        bias = Parameter(torch.randn(10, generator=gen, dtype=dtype))
    else:
        weight = Parameter(torch.randn(10, 5, 2, generator=gen, dtype=dtype)[..., 0])
        bias = Parameter(torch.randn(10, 2, generator=gen, dtype=dtype)[..., 0])
    x = torch.randn(5, generator=gen, dtype=dtype)
    return weight, bias, lambda: (weight.mv(x) + bias).pow(2).sum()


def _train(optimizer, loss_fn, steps=20):
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    return loss_fn().item()


def _fresh(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _assert_nested_equal(a, b) -> None:
    """State dicts equal: tensors exactly, everything else with ``==``."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_nested_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_nested_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def _assert_states_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer, **tol) -> None:
    for pa, pb in zip(
        [p for g in a.param_groups for p in g["params"]],
        [p for g in b.param_groups for p in g["params"]],
    ):
        torch.testing.assert_close(pa, pb, **tol)
        assert a.state[pa].keys() == b.state[pb].keys()
        for key, value in a.state[pa].items():
            torch.testing.assert_close(value, b.state[pb][key], **tol)


# ---------------------------------------------------------------- construction


@optims
def test_optim_inputs_do_not_set_implementation_flags(info):
    for optim_input in info.optim_inputs_func(device="cpu"):
        assert not {"foreach", "fused", "differentiable"} & optim_input.kwargs.keys()


@optims
def test_errors(info):
    for error in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
        optim_input = error.optimizer_error_input
        assert error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR
        if issubclass(error.error_type, Warning):
            with pytest.warns(error.error_type, match=error.error_regex):
                info.optim_cls(optim_input.params, **optim_input.kwargs)
        else:
            with pytest.raises(error.error_type, match=error.error_regex):
                info.optim_cls(optim_input.params, **optim_input.kwargs)


@optims
def test_optimizer_can_be_printed(info):
    weight, bias, _ = _linear_problem()
    for optim_input in info.optim_inputs_func(device="cpu"):
        text = repr(info.optim_cls([weight, bias], **optim_input.kwargs))
        assert text.startswith(info.name)
        for key in optim_input.kwargs:
            assert re.search(rf"\b{key}: ", text), (key, text)


# ---------------------------------------------------------------- the update


@optims
@pytest.mark.parametrize("contiguous", [True, False])
def test_forloop_goes_right_direction(info, contiguous):
    for optim_input in info.optim_inputs_func(device="cpu"):
        weight, bias, loss_fn = _linear_problem(contiguous=contiguous)
        initial = loss_fn().item()
        opt = info.optim_cls([weight, bias], foreach=False, **optim_input.kwargs)
        final = _train(opt, loss_fn)
        if optim_input.kwargs.get("maximize"):
            assert final > initial, optim_input.desc
        else:
            assert final < initial, optim_input.desc


@optims
def test_param_groups_weight_decay(info):
    for optim_input in all_inputs(info):
        weight, bias, loss_fn = _linear_problem()
        initial = loss_fn().item()
        bias_kwargs = {**optim_input.kwargs, "weight_decay": 0.0}
        opt = info.optim_cls(
            [{"params": [weight], **optim_input.kwargs}, {"params": [bias], **bias_kwargs}]
        )
        final = _train(opt, loss_fn)
        assert (final > initial) if optim_input.kwargs.get("maximize") else (final < initial)


@optims
def test_param_groups_lr(info):
    """A group at lr 1e-28 does not move; a group at the config's lr does its job."""
    for optim_input in all_inputs(info):
        weight, bias, loss_fn = _linear_problem()
        irrelevant = Parameter(torch.randn(2))
        before = irrelevant.detach().clone()
        initial = loss_fn().item()
        opt = info.optim_cls(
            [{"params": [weight, bias], **optim_input.kwargs}, {"params": [irrelevant]}],
            lr=1e-28,
        )
        for _ in range(20):
            opt.zero_grad()
            loss_fn().backward()
            irrelevant.grad = torch.rand_like(irrelevant)
            opt.step()
        final = loss_fn().item()
        assert (final > initial) if optim_input.kwargs.get("maximize") else (final < initial)
        torch.testing.assert_close(irrelevant.detach(), before, rtol=0, atol=1e-20)


@optims
def test_tensor_lr_equals_float_lr_and_stays_a_tensor(info):
    """A tensor lr gives the float lr's result, stays the same tensor object in the group (so
    a scheduler's in-place update is seen), and an in-place change takes effect."""
    for optim_input in all_inputs(info):
        kwargs = optim_input.kwargs
        if not isinstance(kwargs["lr"], torch.Tensor):
            continue
        lr = kwargs["lr"].to(torch.float64)
        results = []
        for value in (lr, lr.item()):
            params = _fresh(_linear_problem(torch.float64)[:2])
            opt = info.optim_cls(params, **{**kwargs, "lr": value})
            if isinstance(value, torch.Tensor):
                assert opt.param_groups[0]["lr"] is value
            for step in range(3):
                _set_grads(params, step)
                opt.step()
            results.append(params)
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        lr.zero_()  # lr 0 from now on: the weights only decay
        params = results[0]
        before = [p.detach().clone() for p in params]
        _set_grads(params, 9)
        opt.step()
        if not kwargs.get("weight_decay") and info.optim_cls is not geoptim.AdamWAGR:
            for a, b in zip(before, params):
                torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@optims
def test_complex_parameters_equal_their_real_view(info):
    """A complex parameter is updated exactly as ``torch.view_as_real`` of it (torch's rule),
    mixed with a real parameter in the group."""
    for optim_input in all_inputs(info):
        if info.optim_cls is geoptim.AdamWAGR and optim_input.kwargs["fused"]:
            continue  # torch's fused AdamW refuses complex parameters
        gen = torch.Generator().manual_seed(0)
        complex_params = [
            torch.randn(10, 5, dtype=torch.complex64, generator=gen).requires_grad_(),
            torch.randn(10, dtype=torch.complex64, generator=gen).requires_grad_(),
            torch.randn(10, 5, generator=gen).requires_grad_(),
        ]
        real_params = [
            (torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
            for p in complex_params
        ]
        complex_opt = info.optim_cls(complex_params, **optim_input.kwargs)
        real_opt = info.optim_cls(real_params, **optim_input.kwargs)
        for step in range(3):
            _set_grads(real_params, step)
            for c, r in zip(complex_params, real_params):
                c.grad = torch.view_as_complex(r.grad) if c.is_complex() else r.grad.clone()
            real_opt.step()
            complex_opt.step()
            for c, r in zip(complex_params, real_params):
                real_view = torch.view_as_real(c) if c.is_complex() else c
                torch.testing.assert_close(real_view, r, msg=optim_input.desc)


@optims
def test_step_is_noop_when_params_have_no_grad(info):
    params = [torch.randn(2, 3) for _ in range(2)]
    old = [p.clone() for p in params]
    for optim_input in all_inputs(info):
        opt = info.optim_cls(params, **optim_input.kwargs)
        assert opt.step(lambda: torch.tensor([1.0])).item() == 1.0
        assert all(torch.equal(a, b) for a, b in zip(params, old))
        assert not opt.state


@optims
def test_step_is_noop_for_zero_grads(info):
    param = torch.randn(5, 1, requires_grad=True)
    old = param.detach().clone()
    for optim_input in all_inputs(info):
        opt = info.optim_cls([param], **optim_input.kwargs)
        if opt.param_groups[0]["weight_decay"] != 0:  # decoupled decay moves the weights
            continue
        param.grad = torch.zeros_like(param)
        opt.step()
        assert torch.equal(param.detach(), old), optim_input.desc


@optims
def test_step_counts_steps_in_the_default_dtype(info):
    for default in (torch.float32, torch.float64):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(default)
        try:
            param = torch.randn(3, requires_grad=True)
            opt = info.optim_cls([param], lr=1e-3)
            for _ in range(2):
                param.grad = torch.randn(3)
                opt.step()
        finally:
            torch.set_default_dtype(previous)
        assert opt.state[param]["step"].dtype == default
        assert opt.state[param]["step"].item() == 2


def _model_params(dtype):
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
    ).to(dtype)
    empty = torch.zeros((), dtype=dtype, requires_grad=True)  # a 0-dim parameter last
    empty.grad = torch.rand_like(empty)
    return model, [*model.parameters(), empty]


def _derived_matches_forloop(info, flag, dtype, tol):
    """The ``flag`` implementation equals the for-loop on params and state, 7 steps on a small
    model, no gradient at step 3 (torch's ``_test_derived_optimizers``)."""
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    for optim_input in info.optim_inputs_func(device="cpu"):
        kwargs = optim_input.kwargs
        if info.optim_cls is geoptim.AdamWAGR and (
            isinstance(kwargs["lr"], torch.Tensor)
            or (kwargs.get("moments") == "first" and flag == "fused")
        ):
            # torch's AdamW refuses a tensor lr with foreach, and its fused CPU kernel differs
            # from its for-loop by 1e-7 with one; AGR's first-moment variant is not fused
            continue
        optimizers = []
        for value in (False, True):
            kwargs = {**optim_input.kwargs, "foreach": False, "fused": False, flag: value}
            model, params = _model_params(dtype)
            opt = info.optim_cls(params, **kwargs)
            for i in range(7):
                opt.zero_grad(set_to_none=True)
                if i != 3:
                    model(x).sum().backward()
                opt.step()
            optimizers.append(opt)
        _assert_states_equal(*optimizers, **tol)


@optims
@pytest.mark.parametrize("flag", ["foreach", "fused"])
def test_foreach_and_fused_match_forloop(info, flag):
    _derived_matches_forloop(info, flag, torch.float64, {"rtol": 1e-12, "atol": 1e-14})
    _derived_matches_forloop(info, flag, torch.float32, {"rtol": 1e-5, "atol": 1e-6})


@optims
def test_foreach_matches_forloop_under_float64_default_dtype(info):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _derived_matches_forloop(info, "foreach", torch.float64, {"rtol": 1e-12, "atol": 1e-14})
    finally:
        torch.set_default_dtype(previous)


# ---------------------------------------------------------------- state dicts


def _stepped(info, kwargs, params, steps=range(3)):
    opt = info.optim_cls(params, **kwargs)
    for step in steps:
        _set_grads(params, step)
        opt.step()
    return opt


@optims
def test_state_dict_deterministic_and_round_trips(info):
    """Equal but not identical parameters give equal state dicts; loading one into a fresh
    optimizer continues in lock-step; loading does not modify the loaded dict."""
    for optim_input in all_inputs(info):
        weight, bias, _ = _linear_problem()
        params = [weight, bias]
        opt = _stepped(info, optim_input.kwargs, params)
        clones = _fresh(params)
        opt_c = info.optim_cls(clones, **optim_input.kwargs)
        saved = copy.deepcopy(opt.state_dict())
        loaded = copy.deepcopy(saved)
        opt_c.load_state_dict(loaded)
        _assert_nested_equal(loaded, saved)
        for step in range(3, 6):
            _set_grads(params, step)
            _set_grads(clones, step)
            opt.step()
            opt_c.step()
            for a, b in zip(params, clones):
                assert torch.equal(a, b), optim_input.desc
        _assert_nested_equal(opt.state_dict(), opt_c.state_dict())


@optims
def test_save_load_equality_with_weights_only(info):
    for optim_input in all_inputs(info):
        params = _fresh(_linear_problem()[:2])
        opt = _stepped(info, optim_input.kwargs, params)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)
        _assert_nested_equal(loaded, opt.state_dict())
        opt_c = info.optim_cls(_fresh(params), **optim_input.kwargs)
        opt_c.load_state_dict(loaded)
        _assert_nested_equal(opt_c.state_dict(), opt.state_dict())


@optims
def test_can_load_older_state_dict(info):
    """A state dict without the implementation flags (saved by an older version or another
    library) and with float steps loads, and the next steps equal the original's."""
    for optim_input in info.optim_inputs_func(device="cpu"):
        params = _fresh(_linear_problem()[:2])
        opt = _stepped(info, optim_input.kwargs, params)
        old = copy.deepcopy(opt.state_dict())
        for group in old["param_groups"]:
            for key in ("maximize", "foreach", "fused", "differentiable"):
                group.pop(key, None)
        for state in old["state"].values():
            state["step"] = state["step"].item()
        clones = _fresh(params)
        opt_c = info.optim_cls(clones, **optim_input.kwargs)
        opt_c.load_state_dict(old)
        for group in opt_c.param_groups:
            assert group["maximize"] is False and group["foreach"] is None
        for step in range(3, 5):
            _set_grads(params, step)
            _set_grads(clones, step)
            opt.step()
            opt_c.step()
        if not optim_input.kwargs.get("maximize"):
            for a, b in zip(params, clones):
                torch.testing.assert_close(a, b)


@optims
def test_deepcopy_copies_all_public_attributes(info):
    params = _fresh(_linear_problem()[:2])
    opt = _stepped(info, {"lr": 1e-3}, params)
    public = {k for k in opt.__dict__ if not k.startswith("_")}
    assert public == {k for k in copy.deepcopy(opt).__dict__ if not k.startswith("_")}


# ---------------------------------------------------------------- hooks


@optims
def test_step_pre_and_post_hooks(info):
    params = _fresh(_linear_problem()[:2])
    opt = info.optim_cls(params, lr=1e-3)
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    global_pre = register_optimizer_step_pre_hook(
        lambda o, args, kwargs: calls.append("global pre")
    )
    try:
        _set_grads(params, 0)
        opt.step()
    finally:
        global_pre.remove()
    pre.remove()
    post.remove()
    _set_grads(params, 1)
    opt.step()
    assert calls == ["global pre", "pre", "post"]


@optims
def test_state_dict_hooks(info):
    params = _fresh(_linear_problem()[:2])
    opt = _stepped(info, {"lr": 1e-3}, params)
    opt.register_state_dict_pre_hook(lambda o: o.param_groups[0].__setitem__("marked", 1))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 2})
    saved = opt.state_dict()
    assert saved["extra"] == 2 and saved["param_groups"][0]["marked"] == 1

    opt_c = info.optim_cls(_fresh(params), lr=1e-3)
    seen = []

    def pre_hook(o, state_dict):
        seen.append("pre")
        state_dict = copy.deepcopy(state_dict)
        state_dict.pop("extra")
        state_dict["param_groups"][0]["lr"] = 0.5
        return state_dict

    opt_c.register_load_state_dict_pre_hook(pre_hook)
    opt_c.register_load_state_dict_post_hook(lambda o: seen.append("post"), prepend=True)
    opt_c.load_state_dict(saved)
    assert seen == ["pre", "post"]
    assert opt_c.param_groups[0]["lr"] == 0.5


# ---------------------------------------------------------------- refused flags


@optims
def test_differentiable_is_refused_clearly(info):
    param = Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=f"{info.name} does not support differentiable=True"):
        info.optim_cls([param], differentiable=True)
    with pytest.raises(ValueError, match="differentiable"):
        info.optim_cls([param]).add_param_group(
            {"params": [Parameter(torch.randn(2))], "differentiable": True}
        )
