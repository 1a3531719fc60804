"""The fused kernels (geoptim._compiled) equal the reference, and fall back cleanly."""

import copy
import warnings

import pytest
import torch

import geoptim
from geoptim import _compiled, _stats
from geoptim.agr import agr, agr_multi
from geoptim.lp import lp_exponent
from tests.optim.cases import CASES, make_grads, make_params, run_steps

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
@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_lp_map_float32_within_2_ulp_of_the_exact_map(eps, small_tensors_fused):
    """The fused float32 l_p map u (|u| + eps)^-rho (``powf_neg`` in csrc/fused.c, evaluated in
    double, then the product) is within 2 ulp of the exact map of the same float32 inputs
    (|u| + eps and -rho rounded to float32, as the reference computes them) over a dense sweep
    of |u| from 1e-12 to 1e6 and of p from just above 2 to infinity."""
    n = 200_000
    magnitudes = torch.logspace(-12, 6, n, dtype=torch.float64)
    u = (magnitudes * torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)).float()
    for p in (2.001, 2.1, 2.5, 3.0, 4.0, 6.0, 9.0, 17.0, 100.0, 1e4, float("inf")):
        y = torch.tensor(-lp_exponent(p), dtype=torch.float32).double()
        exact = -(u.double() * (u.abs() + eps).double() ** y)
        w = torch.zeros_like(u).requires_grad_()
        opt = geoptim.LPSGD([w], lr=1.0, p=p, eps=eps, fused=True)
        w.grad = u.clone()
        opt.step()
        finite = exact.abs() <= torch.finfo(torch.float32).max
        _, exponent = torch.frexp(exact[finite])
        ulp = torch.exp2((exponent - 24).clamp_min(-149).double())
        errors = (w.detach()[finite].double() - exact[finite]).abs() / ulp
        assert errors.max() <= 2.0, (p, errors.max().item())
        assert torch.isinf(w.detach()[~finite]).all()


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


def test_only_plain_dense_float_cpu_tensors_with_equal_strides_are_fusable():
    big = torch.zeros(4096)
    assert _compiled.fusable([big, big.clone(), None])
    assert _compiled.fusable([big.bfloat16(), big.bfloat16()])  # computed in float32 inside
    conv = torch.zeros(8, 3, 5, 5).to(memory_format=torch.channels_last)
    assert _compiled.fusable([conv, torch.zeros_like(conv)])  # zeros_like keeps the layout
    assert _compiled.fusable([torch.zeros(2, 4096).t()] * 2)  # a transpose is dense too
    assert not _compiled.fusable([conv, torch.zeros(8, 3, 5, 5)])  # different strides
    assert not _compiled.fusable([torch.zeros(0)])  # empty
    assert not _compiled.fusable([big, big.double()])  # mixed dtypes
    assert not _compiled.fusable([torch.zeros(4096)[::2]])  # gaps between elements
    assert not _compiled.fusable([torch.zeros(3).expand(4, 3)])  # overlapping elements
    assert not _compiled.fusable([torch.zeros(4, dtype=torch.int64)])


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
def test_in_place_update_bumps_the_version_counter():
    p = torch.randn(4096, requires_grad=True)
    p.grad = torch.randn_like(p)
    before = p._version
    geoptim.Lion([p]).step()
    assert p._version > before


# ---------------------------------------------------------------- dtypes, layouts, statistics

#: Explicit mantissa bits of the 16-bit formats, and their smallest subnormal's exponent.
MANTISSA = {torch.bfloat16: (7, -133), torch.float16: (10, -24)}
#: AdamW-AGR's AdamW is torch's (16-bit arithmetic); AdanAGR hands Adan a rounded 16-bit Psi(g)
#: (a second rounding, tested on its own by test_16_bit_gradients_through_fused_agr).
LOW_PRECISION_CASES = sorted(name for name in CASES if "agr" not in name)


def _ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s numbers at the float64 values ``x``."""
    bits, smallest = MANTISSA[dtype]
    _, exponent = torch.frexp(x)
    return torch.exp2((exponent - 1 - bits).clamp_min(smallest).double())


def _values(opt, params):
    """The parameters, then every state tensor but the step counters, in a fixed order."""
    return [*params, *(v for p in params for k, v in opt.state[p].items() if k != "step")]


@needs_library
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", LOW_PRECISION_CASES)
def test_16_bit_fused_step_is_the_float64_step_rounded(name, dtype, small_tensors_fused):
    """Each fused step of 16-bit parameters and state, taken from the same 16-bit values as a
    float64 and a float32 reference step, lands within one unit in the last place of the 16-bit
    format of the float64 result (half a unit for the one rounding, half for the float32
    arithmetic) plus twice the float32 reference's own error (where the update is
    ill-conditioned, e.g. OrtSepNorm's projection of an update nearly parallel to the weight)
    plus 4 float32 eps of the tensor's magnitude (results that cancel to near zero)."""
    params = make_params(dtype)
    opt = CASES[name](params, fused=True)
    eps32 = torch.finfo(torch.float32).eps
    for step in range(1, 6):
        copies = {}
        for precision in (torch.float64, torch.float32):
            tensors = [p.detach().to(precision).requires_grad_() for p in params]
            reference = CASES[name](tensors, foreach=False)
            reference.load_state_dict(copy.deepcopy(opt.state_dict()))  # state cast likewise
            copies[precision] = (tensors, reference)
        for i, g in enumerate(make_grads(step, dtype)):
            for p in (params[i], *(tensors[i] for tensors, _ in copies.values())):
                p.grad = None if g is None else g.to(p.dtype)
        for optimizer in (opt, *(reference for _, reference in copies.values())):
            optimizer.step()
        (exact_params, exact_opt), (single_params, single_opt) = copies.values()
        rows = zip(
            _values(opt, params),
            _values(exact_opt, exact_params),
            _values(single_opt, single_params),
        )
        for low, exact, single in rows:
            assert low.dtype == dtype
            if low.numel() == 0:
                continue
            exact, single = exact.detach(), single.detach().double()
            bound = _ulp(exact, dtype) + 2 * (single - exact).abs()
            bound += 4 * eps32 * exact.abs().max().clamp_min(1.0)
            error = (low.double() - exact).abs()
            worst = (error / bound).flatten().argmax()
            assert (error <= bound).all(), (step, low.flatten()[worst], exact.flatten()[worst])


@needs_library
def test_16_bit_gradients_through_fused_agr():
    """AGR's fused transform of bf16 and fp16 gradients is the float64 transform rounded."""
    grads = [g.detach().clone() for g in make_params(torch.float64)]
    for dtype in MANTISSA:
        low = [g.to(dtype) for g in grads]
        assert _compiled.split_fusable(low)[0]
        for psi, g in zip(agr_multi(low), low):
            exact = agr(g.double())
            assert psi.dtype == dtype
            bound = _ulp(exact, dtype) + 4 * torch.finfo(torch.float32).eps * g.double().abs()
            assert ((psi.double() - exact).abs() <= bound).all()


def _conv_params(memory_format):
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (4, 8, 1, 1), (8,)]
    tensors = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    return [
        t.to(memory_format=memory_format).requires_grad_() if t.dim() == 4 else t.requires_grad_()
        for t in tensors
    ]


@needs_library
@pytest.mark.parametrize("name", sorted(CASES))
def test_channels_last_fused_equals_contiguous_reference(name, monkeypatch):
    """channels_last weights (state created in the same layout) take the fused path and give
    the contiguous reference's values."""
    launched = []
    launch = _compiled.launch
    monkeypatch.setattr(
        _compiled, "launch", lambda *a, **k: launched.append(a[0]) or launch(*a, **k)
    )
    results = []
    for memory_format, kw in (
        (torch.contiguous_format, {"foreach": False}),
        (torch.channels_last, {}),
    ):
        params = _conv_params(memory_format)
        opt = CASES[name](params, **kw)
        for step in range(1, 5):
            gen = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(
                    memory_format=memory_format if p.dim() == 4 else torch.contiguous_format
                )
            opt.step()
        if memory_format == torch.channels_last:
            for key, value in opt.state[params[0]].items():
                if key != "step":
                    assert value.is_contiguous(memory_format=torch.channels_last), key
        results.append(params)
    assert launched  # the channels_last run was fused
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


@needs_library
@pytest.mark.parametrize(
    "name", ["lion", "sepnorm_tensor", "ortsepnorm_global", "lpsgdm_p6", "adan"]
)
def test_mixed_dtypes_in_one_group_each_match_their_reference(name):
    """float64, float32 and bfloat16 tensors in one param group: each launch takes one dtype,
    and each tensor ends where the single-tensor reference puts it."""
    dtypes = [torch.float64, torch.float32, torch.bfloat16, torch.float64, torch.float32]
    results = []
    for kw in ({"foreach": False}, {"fused": True}):
        params = [p.detach().to(d).requires_grad_() for p, d in zip(make_params(), dtypes)]
        opt = CASES[name](params, **kw)
        for step in range(1, 4):
            for p, g in zip(params, make_grads(step)):
                p.grad = None if g is None else g.to(p.dtype)
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[a.dtype]
        torch.testing.assert_close(b, a, rtol=tolerance, atol=tolerance)


@needs_library
@pytest.mark.parametrize("name", ["sepnorm_tensor", "ortsepnorm_tensor", "normsgd"])
def test_normalised_updates_keep_no_workspace(name):
    _compiled._workspaces.clear()
    params = [torch.randn(4096, requires_grad=True) for _ in range(3)]
    opt = CASES[name](params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert len(_compiled._workspaces) == 0


@needs_library
@pytest.mark.parametrize("grouping", ["tensor", "global"])
def test_ortsepnorm_update_parallel_to_the_weight_matches_the_reference(grouping):
    """u = 0.3 w exactly at the first step: ||u - c w||^2 is pure cancellation in the one-pass
    statistics, so the fused path recomputes it (per tensor: the whole update) as the
    reference does."""
    results = []
    for kw in ({"foreach": False}, {"fused": True}):
        w = torch.randn(4096, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        params = [
            w.requires_grad_(),
            torch.linspace(-1, 1, 64, dtype=torch.float64).requires_grad_(),
        ]
        opt = geoptim.OrtSepNorm(params, lr=0.01, weight_decay=0.1, grouping=grouping, **kw)
        params[0].grad = 3 * params[0].detach()
        params[1].grad = torch.ones(64, dtype=torch.float64)
        opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


@needs_library
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_sums_equal_float64_sums(dtype, threads):
    """The statistics pass's per-tensor sums (u = lerp(m, g, 0.1): sum u^2, sum w u, sum w^2;
    and sum |g|) equal float64 sums of the same values, over block and thread boundaries, and
    pass through _stats.reduce_partial_sums unchanged for whole tensors."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(70_001,), (3, 1025), (1,), (5000,)]  # > 65536 elements in all: threads split it
    w, g, m = ([torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(3))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        partial = _compiled.launch_by_dtype("lion_sums", [g, m, w], (0.1,), flags=1, reduces=True)
        abs_sums = _compiled.launch_by_dtype("abs_sums", [g], reduces=True)[:, 0]
    finally:
        torch.set_num_threads(previous)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    u = [mi.to(compute).lerp(gi.to(compute), 0.1) for mi, gi in zip(m, g)]
    expected = torch.tensor(
        [
            [(ui.double() ** 2).sum(), (wi.double() * ui.double()).sum(), (wi.double() ** 2).sum()]
            for ui, wi in zip(u, w)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(_stats.reduce_partial_sums(w, partial), expected, rtol=1e-12, atol=0)
    expected_abs = torch.stack([gi.double().abs().sum() for gi in g])
    torch.testing.assert_close(abs_sums, expected_abs, rtol=1e-12, atol=0)
