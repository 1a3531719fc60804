"""The fused kernels (geoptim._compiled) equal the reference, and fall back cleanly."""

import warnings

import pytest
import torch

import geoptim
from geoptim import _compiled
from geoptim.agr import agr, agr_multi
from geoptim.lp import lp_exponent
from tests.optim.cases import CASES, make_params, run_steps

needs_library = pytest.mark.skipif(
    _compiled.library() is None, reason="no C compiler for the fused kernels"
)


@pytest.fixture
def small_tensors_fused(monkeypatch):
    """Every non-empty tensor of the test problem takes the fused path, whatever the default
    threshold (one-element tensors included: OrtSepNorm's update of one is pure rounding noise,
    amplified by the normalisation, so this also checks that the rounding is ATen's)."""
    monkeypatch.setattr(_compiled, "MIN_NUMEL", 1)


def _fused_case(name, params, **kw):
    """CASES[name] with the fused path on (AdamW-AGR: AGR's fused kernel in front of AdamW)."""
    if name.startswith("adamw_agr"):
        return CASES[name](params, **kw)
    return CASES[name](params, fused=True, **kw)


@needs_library
@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_equals_reference_float64(name, small_tensors_fused):
    results = []
    for fused in (False, True):
        params = make_params(torch.float64)
        opt = _fused_case(name, params) if fused else CASES[name](params, foreach=False)
        run_steps(opt, params, range(1, 9))
        results.append((params, opt.state_dict()["state"]))
    (ref_params, ref_state), (fast_params, fast_state) = results
    for p_ref, p_fast in zip(ref_params, fast_params):
        torch.testing.assert_close(p_fast, p_ref, rtol=1e-12, atol=1e-14)
    for index, ref in ref_state.items():
        for key, value in ref.items():
            torch.testing.assert_close(fast_state[index][key], value, rtol=1e-12, atol=1e-14)


@needs_library
@pytest.mark.parametrize(
    "name", ["lion", "sepnorm_tensor", "ortsepnorm_tensor", "lpsgdm_p6", "adan"]
)
def test_fused_float32_large_tensors(name):
    """Realistic sizes (fused path by default) in float32 track the float64 reference."""
    shapes = [(64, 96), (3, 4096), (7,)]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(5)]
    finals = {}
    for dtype, kw in ((torch.float64, {"foreach": False}), (torch.float32, {})):
        params = [x.to(dtype, copy=True).requires_grad_() for x in init]
        opt = CASES[name](params, **kw)
        assert _compiled.kernel_mode(opt.param_groups[0]) == ("single" if kw else "fused")
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.to(dtype)
            opt.step()
        finals[dtype] = params
    for a, b in zip(finals[torch.float32], finals[torch.float64]):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@needs_library
def test_lp_map_power_error_bound(small_tensors_fused):
    """The fused float32 l_p map (its own branch-free pow, evaluated in double, see
    ``powf_neg`` in geoptim._compiled) is within 1.5 float32 eps of the exact map of the same
    float32 inputs (|u| + eps and -rho rounded to float32, as the reference computes them):
    0.5 ulp for the power, 0.5 ulp for the product; never worse than the eager reference."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(200_000, generator=gen, dtype=torch.float64) * torch.logspace(
        -9, 3, 200_000, dtype=torch.float64
    )
    u = u.float()
    eps32 = torch.finfo(torch.float32).eps
    for p in (3.0, 6.0, 9.0, float("inf")):
        y = torch.tensor(-lp_exponent(p), dtype=torch.float32).double()
        exact = -(u.double() * (u.abs() + 1e-8).double() ** y)
        errors = {}
        for kw in ({"fused": True}, {"foreach": False}):
            w = torch.zeros_like(u).requires_grad_()
            opt = geoptim.LPSGD([w], lr=1.0, p=p, **kw)
            w.grad = u.clone()
            opt.step()
            errors[str(kw)] = ((w.double() - exact).abs() / (exact.abs() * eps32)).max().item()
        fused, reference = errors["{'fused': True}"], errors["{'foreach': False}"]
        assert fused <= 1.5 and fused <= reference + 0.5, (p, fused, reference)


@needs_library
def test_agr_multi_fused_equals_reference(small_tensors_fused):
    grads = [g.clone() for g in make_params(torch.float64)]
    owner = torch.zeros(1)
    for kw in ({}, {"fused": False}, {"owner": owner}, {"owner": owner}):
        for g, psi in zip(grads, agr_multi(grads, **kw)):
            torch.testing.assert_close(psi, agr(g), rtol=1e-14, atol=1e-16)


def test_kernel_mode_and_argument_checks():
    assert _compiled.kernel_mode({"foreach": False, "fused": None}) == "single"
    assert _compiled.kernel_mode({"foreach": None, "fused": None}) == "fused"
    assert _compiled.kernel_mode({"foreach": True, "fused": None}) == "multi"
    assert _compiled.kernel_mode({"foreach": True, "fused": True}) == "fused"
    assert _compiled.kernel_mode({"foreach": None, "fused": False}) == "multi"
    assert _compiled.kernel_mode({"foreach": None}) == "fused"  # state dict from before `fused`
    assert _compiled.kernel_mode({"foreach": False, "fused": True}) == "fused"  # as torch.optim
    with pytest.raises(ValueError, match="fused"):
        geoptim.Adan([torch.zeros(2, requires_grad=True)], fused="yes")


def test_only_plain_contiguous_float_cpu_tensors_are_fusable():
    big = torch.zeros(4096)
    assert _compiled.fusable([big, big.clone(), None])
    assert not _compiled.fusable([torch.zeros(0)])  # empty
    assert not _compiled.fusable([big.bfloat16()])  # 16-bit: multi-tensor path, float32 math
    assert not _compiled.fusable([big, big.double()])  # mixed dtypes
    assert not _compiled.fusable([torch.zeros(2, 4096).t()])  # non-contiguous


@pytest.mark.parametrize("name", ["lion", "sepnorm_global", "lpsgdm_p6", "adan", "adan_agr"])
def test_falls_back_when_the_library_cannot_be_built(
    name, monkeypatch, tmp_path, small_tensors_fused
):
    """No compiler: one warning, then the multi-tensor path, with the reference's results."""
    monkeypatch.setattr(_compiled, "_library", None)
    monkeypatch.setattr(_compiled, "_tried", False)
    monkeypatch.setenv("GEOPTIM_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr("shutil.which", lambda _: None)
    results = []
    for kw in ({"foreach": False}, {"fused": True}):
        params = make_params(torch.float64)
        opt = CASES[name](params, **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_steps(opt, params, range(1, 4))
        if "fused" in kw:
            assert sum("fused kernels unavailable" in str(w.message) for w in caught) == 1
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@needs_library
def test_bfloat16_and_mixed_groups_keep_working():
    """16-bit tensors take the multi-tensor path (float32 arithmetic) next to fused ones."""
    params = [
        torch.randn(4096).requires_grad_(),
        torch.randn(64).bfloat16().requires_grad_(),
    ]
    opt = geoptim.SepNorm(params, lr=0.01, fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert params[1].dtype == torch.bfloat16
    assert all(torch.isfinite(p).all() for p in params)


@needs_library
def test_in_place_update_bumps_the_version_counter():
    p = torch.randn(4096, requires_grad=True)
    p.grad = torch.randn_like(p)
    before = p._version
    geoptim.Lion([p]).step()
    assert p._version > before
