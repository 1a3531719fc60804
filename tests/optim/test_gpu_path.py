"""The CUDA fused path (geoptim._gpu): the compiled single-tensor reference, checked on CPU.

Tests route CPU tensors through it (``_gpu.DEVICES``). The default suite compiles with
``backend="aot_eager"`` (dynamo's tracing and guards with ATen kernels: checks the wiring, the
full graph and the absence of recompilation cheaply); ``-m slow`` compiles with inductor's C++
backend, the code generator that CUDA tensors get.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import geoptim
from geoptim import _gpu
from tests.optim.cases import CASES, make_grads, make_params, run_steps

#: One case per family and option that changes the compiled graph.
REPRESENTATIVE = [
    "lion",
    "ortsepnorm_tensor",
    "normsgd",
    "lpsgdm_p6",
    "lpsgd_p2",
    "adan_noprox_clip",
    "adamw_agr",
    "adan_agr",
]


@pytest.fixture
def compiled_on_cpu(monkeypatch, request):
    """CPU tensors take the compiled path with the backend given by the test's parameter
    (default ``aot_eager``); every compilation starts afresh and counts."""
    monkeypatch.setattr(_gpu, "DEVICES", {"cpu"})
    monkeypatch.setattr(_gpu, "BACKEND", getattr(request, "param", "aot_eager"))
    monkeypatch.setattr(_gpu, "_compiled", {})
    monkeypatch.setattr(_gpu, "_failed", set())
    torch._dynamo.reset()
    counters.clear()
    calls = []
    run = _gpu.run
    monkeypatch.setattr(_gpu, "run", lambda *a, **k: calls.append(a[0].__name__) or run(*a, **k))
    yield calls
    torch._dynamo.reset()


def _compiled_and_reference(name, dtype=torch.float64, steps=range(1, 9)):
    results = []
    for compiled in (False, True):
        params = make_params(dtype)
        kwargs = {} if compiled else {"foreach": False}
        opt = CASES[name](params, **kwargs)
        run_steps(opt, params, steps)
        results.append((params, opt.state_dict()["state"]))
    return results


def _assert_equal(results, rtol, atol, scalar_atol=None):
    """Parameters and state equal; with ``scalar_atol``, one-element parameters only within
    that absolute bound."""
    (ref_params, ref_state), (params, state) = results
    for p, p_ref in zip(params, ref_params):
        if scalar_atol is not None and p.numel() == 1:
            torch.testing.assert_close(p, p_ref, rtol=0, atol=scalar_atol)
        else:
            torch.testing.assert_close(p, p_ref, rtol=rtol, atol=atol)
    for index, ref in ref_state.items():
        for key, value in ref.items():
            torch.testing.assert_close(state[index][key], value, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_compiled_reference_equals_reference_float64(name, compiled_on_cpu):
    """aot_eager runs the traced ATen ops of the reference, so only the tensor-valued ``lr``,
    ``p`` and step counts (float64, exact) differ from it: equal to ``rtol=1e-12``."""
    results = _compiled_and_reference(name)
    assert compiled_on_cpu, "the compiled path was not taken"
    _assert_equal(results, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("compiled_on_cpu", ["inductor"], indirect=True)
@pytest.mark.parametrize("name", sorted(CASES))
def test_inductor_compiled_reference_equals_reference_float64(name, compiled_on_cpu):
    """Inductor's generated code reassociates sums and contracts multiply-adds: within
    ``rtol=1e-12`` after 8 steps in float64 all the same. Except OrtSepNorm's one-element
    tensors (per-tensor grouping): their projected update ``u - (wu/ww) w`` is rounding noise,
    normalised to magnitude 1, so only its size is bounded: ``lr`` per step, 8 steps."""
    results = _compiled_and_reference(name)
    assert compiled_on_cpu
    scalar_atol = 8 * 2 * 0.01 if name == "ortsepnorm_tensor" else None
    _assert_equal(results, rtol=1e-12, atol=1e-14, scalar_atol=scalar_atol)


@pytest.mark.slow
@pytest.mark.parametrize("compiled_on_cpu", ["inductor"], indirect=True)
@pytest.mark.parametrize("name", ["lion", "sepnorm_tensor", "lpsgdm_p6", "adan"])
def test_inductor_bfloat16_tracks_reference(name, compiled_on_cpu):
    """bf16: the compiled graph computes in float32 (the reference's working copies) and
    rounds once per stored tensor, as the reference does: within 2 bf16 ulp of it per step."""
    results = _compiled_and_reference(name, torch.bfloat16, range(1, 4))
    _assert_equal(results, rtol=2 * 2**-8, atol=1e-6)


def _steps_compile_once(make_opt, schedule=None):
    """Graphs compiled at each of three steps of a fixed group (every gradient present)."""
    params = make_params(torch.float64)
    opt = make_opt(params)
    sched = schedule(opt) if schedule else None
    graphs = []
    for k in range(1, 4):
        for p, g in zip(params, make_grads(1 + k % 2, torch.float64)):
            p.grad = g
        opt.step()
        if sched is not None:
            sched.step()
        graphs.append(counters["stats"]["unique_graphs"])
    return graphs


@pytest.mark.parametrize(
    "name, schedule",
    [
        ("adan", None),  # the step counts change every step
        ("ortsepnorm_tensor", lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5)),
        ("lpsgdm_p6", lambda o: geoptim.CosinePScheduler(o, p_max=6.0, T_max=10)),
        ("adamw_agr", None),
    ],
)
def test_no_recompilation_after_the_first_step(name, schedule, compiled_on_cpu):
    graphs = _steps_compile_once(CASES[name], schedule)
    assert graphs[0] >= 1
    assert graphs[1] == graphs[0] and graphs[2] == graphs[0], graphs


def test_compile_failure_falls_back_with_one_warning(compiled_on_cpu, monkeypatch):
    def broken(reference):
        def fail(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(_gpu, "compiled", broken)
    params = make_params(torch.float64)
    opt = geoptim.Lion(params, lr=0.01, weight_decay=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_steps(opt, params, range(1, 4))
    messages = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    assert len(messages) == 1 and "no compiler here" in messages[0]
    reference = make_params(torch.float64)
    run_steps(
        geoptim.Lion(reference, lr=0.01, weight_decay=0.1, foreach=False), reference, range(1, 4)
    )
    for p, p_ref in zip(params, reference):
        torch.testing.assert_close(p, p_ref, rtol=1e-12, atol=1e-14)


def test_cpu_tensors_keep_the_c_kernels(monkeypatch):
    """Without the test hook, CPU tensors never take the compiled path."""
    calls = []
    monkeypatch.setattr(_gpu, "run", lambda *a, **k: calls.append(a))
    params = make_params(torch.float32)
    run_steps(geoptim.Lion(params, lr=0.01), params, range(1, 3))
    assert not calls


# ---------------------------------------------------------------- the per-group plans


def test_group_plan_is_kept_and_rebuilt_when_its_key_changes():
    """The plan (parameters with a gradient, their states) is reused between steps and rebuilt
    when the gradients present, the state dict (load_state_dict) or its size change; every
    variant still equals the reference run."""
    params = make_params(torch.float64)
    opt = geoptim.Lion(params, lr=0.01, weight_decay=0.1)
    reference = make_params(torch.float64)
    ref_opt = geoptim.Lion(reference, lr=0.01, weight_decay=0.1, foreach=False)
    plans = []
    for k in range(1, 9):
        if k == 7:  # a resumed run: new state dict objects
            opt.load_state_dict(opt.state_dict())
        if k == 8:  # a user resets the optimizer's state
            opt.state.clear()
            ref_opt.state.clear()
        run_steps(opt, params, range(k, k + 1))
        run_steps(ref_opt, reference, range(k, k + 1))
        plans.append(opt._plans[id(opt.param_groups[0])])
    assert plans[2] is not plans[1] and plans[3] is not plans[2]  # a gradient None at step 3
    assert plans[4] is plans[3] and plans[5] is plans[4]  # kept
    assert plans[6] is not plans[5] and plans[7] is not plans[6]
    for p, p_ref in zip(params, reference):
        torch.testing.assert_close(p, p_ref, rtol=1e-12, atol=1e-14)
    assert opt.state_dict()["state"][0]["step"] == 1  # counted from the reset


def test_step_counters_are_one_tensor_and_a_replaced_one_still_counts():
    params = make_params(torch.float64)
    opt = geoptim.Lion(params, lr=0.01)
    run_steps(opt, params, range(1, 3))
    plan = opt._plans[id(opt.param_groups[0])]
    assert plan.counter is not None and plan.counter.tolist() == [2.0] * len(params)
    assert all(opt.state[p]["step"]._base is plan.counter for p in params)
    opt.state[params[1]]["step"] = torch.tensor(100.0)  # e.g. a hand-edited resume
    run_steps(opt, params, range(4, 5))
    expected = [3.0] * len(params)
    expected[1] = 101.0
    assert [float(opt.state[p]["step"]) for p in params] == expected
