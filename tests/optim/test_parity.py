"""The multi-tensor fast path equals the single-tensor reference on params and state."""

import pytest
import torch

from tests.optim.cases import CASES, make_params, run_steps


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_equals_reference_float64(name):
    results = []
    for foreach in (False, True):
        params = make_params(torch.float64)
        opt = CASES[name](params, foreach=foreach)
        run_steps(opt, params, range(1, 9))
        results.append((params, opt.state_dict()["state"]))
    (ref_params, ref_state), (fast_params, fast_state) = results
    for p_ref, p_fast in zip(ref_params, fast_params):
        torch.testing.assert_close(p_fast, p_ref, rtol=1e-12, atol=1e-14)
    assert ref_state.keys() == fast_state.keys()
    for index, ref in ref_state.items():
        assert ref.keys() == fast_state[index].keys()
        for key, value in ref.items():
            torch.testing.assert_close(fast_state[index][key], value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_grad_none_step_is_skipped(name):
    """Parameter 2 has no gradient at step 3: its value and state do not change there."""
    params = make_params()
    opt = CASES[name](params)
    run_steps(opt, params, range(1, 3))
    before = params[2].detach().clone()
    state_before = {
        k: v.clone() for k, v in opt.state[params[2]].items() if isinstance(v, torch.Tensor)
    }
    run_steps(opt, params, range(3, 4))
    assert torch.equal(params[2], before)
    for key, value in state_before.items():
        assert torch.equal(opt.state[params[2]][key], value)


@pytest.mark.parametrize("name", sorted(CASES))
def test_low_precision_paths_agree(name):
    """bf16 parameters: both paths compute in float32 and agree; they track a float32 run."""
    finals = {}
    for dtype, foreach in ((torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, True)):
        params = make_params(dtype)
        opt = CASES[name](params, foreach=foreach)
        run_steps(opt, params, range(1, 5))
        finals[(dtype, foreach)] = [p.detach().float() for p in params]
        for p in params:
            assert p.dtype == dtype
            assert torch.isfinite(p).all()
    for a, b in zip(finals[(torch.bfloat16, False)], finals[(torch.bfloat16, True)]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    for a, b in zip(finals[(torch.bfloat16, True)], finals[(torch.float32, True)]):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_maximize_equals_minimizing_the_negated_gradient(name):
    results = []
    for maximize in (False, True):
        params = make_params()
        opt = CASES[name](params, maximize=maximize)
        for step in range(1, 6):
            for p, g in zip(
                params, [torch.full_like(p, 0.0) + step * 0.1 + p.detach() ** 2 for p in params]
            ):
                p.grad = -g if maximize else g
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
