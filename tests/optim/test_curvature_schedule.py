"""CurvaturePScheduler: known answers of both estimators, the map's range, the never-increase
switch, exact resume, and end-to-end use with LPSGDM."""

import io
import itertools
import math

import pytest
import torch
from torch import nn

import geoptim
from geoptim.curvature_schedule import gradient_anisotropy, hessian_anisotropy

N = 64
SPIKED = torch.tensor([1000.0] + [1.0] * (N - 1), dtype=torch.float64)  # one sharp direction
ISOTROPIC = torch.ones(N, dtype=torch.float64)
ESTIMATORS = ("gradient", "hessian")


def _noisy_quadratic(eigenvalues, estimator, steps=40, **kwargs):
    """LPSGDM on ``0.5 sum_i lambda_i (x_i - xi_i)**2`` with a fresh ``xi ~ N(0, 1)`` each step:
    the gradients are ``-lambda * xi`` up to the small ``x``, the Hessian is ``diag(lambda)``."""
    x = torch.zeros(N, dtype=torch.float64, requires_grad=True)
    opt = geoptim.LPSGDM([x], lr=1e-4, p=8.0)
    options = {"estimator": estimator, "interval": 5, "a_hi": float(N), "beta2": 0.9} | kwargs
    sched = geoptim.CurvaturePScheduler(opt, p_max=8.0, **options)
    gen = torch.Generator().manual_seed(0)
    history = []
    for _ in range(steps):
        xi = torch.randn(N, generator=gen, dtype=torch.float64)

        def loss(xi=xi):
            return 0.5 * (eigenvalues * (x - xi).square()).sum()

        opt.zero_grad()
        loss().backward()
        opt.step()
        sched.step(loss) if estimator == "hessian" else sched.step()
        history.append(sched.p)
    return sched, history


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_p_is_higher_on_the_anisotropic_quadratic(estimator):
    spiked, _ = _noisy_quadratic(SPIKED, estimator)
    isotropic, _ = _noisy_quadratic(ISOTROPIC, estimator)
    # gradient: n sum(l^2) / sum(l)^2 = 56.6; hessian: l_max n / sum(l) = 60.2 (module docstring)
    expected = 56.64 if estimator == "gradient" else 60.207
    assert spiked.last_measurement["anisotropy"] == pytest.approx(expected, rel=0.1)
    assert isotropic.last_measurement["anisotropy"] == pytest.approx(1.0, abs=0.2)
    assert spiked.p > 7.5 and isotropic.p < 2.5


def test_gradient_anisotropy_known_answers():
    assert gradient_anisotropy([SPIKED.square()]) == pytest.approx(N * (1e6 + 63) / 1063**2)
    assert gradient_anisotropy([torch.full((5,), 3.0), torch.full((2, 2), 3.0)]) == pytest.approx(1)
    one_hot = torch.zeros(10)
    one_hot[3] = 2.0
    assert gradient_anisotropy([one_hot]) == pytest.approx(10.0)  # the maximum, n
    assert math.isnan(gradient_anisotropy([torch.zeros(4)]))


def _quadratic_loss(hessian):
    x = torch.randn(len(hessian), dtype=torch.float64, requires_grad=True)
    return 0.5 * x @ hessian @ x, [x]


def test_hessian_lambda_max_and_bulk_on_a_diagonal_quadratic():
    """A Rademacher probe makes the quadrature exact on a diagonal Hessian (two distinct
    eigenvalues: two Lanczos steps suffice; the rest must stop cleanly at breakdown)."""
    loss, params = _quadratic_loss(torch.diag(SPIKED))
    m = hessian_anisotropy(loss, params, steps=10, generator=torch.Generator().manual_seed(1))
    assert m["lambda_max"] == pytest.approx(1000.0, rel=1e-10)
    assert m["mean_abs_eigenvalue"] == pytest.approx(1063 / N, rel=1e-10)
    assert m["anisotropy"] == pytest.approx(1000 * N / 1063, rel=1e-10)


def test_hessian_indefinite_diagonal_uses_the_mean_absolute_eigenvalue():
    eigenvalues = torch.tensor([5.0, -3.0, -3.0, 1.0, 1.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    loss, params = _quadratic_loss(torch.diag(eigenvalues))
    m = hessian_anisotropy(loss, params, steps=8, generator=torch.Generator().manual_seed(2))
    assert m["lambda_max"] == pytest.approx(5.0, rel=1e-10)
    assert m["mean_abs_eigenvalue"] == pytest.approx(14.5 / 8, rel=1e-10)


def test_hessian_lambda_max_on_a_rotated_quadratic():
    gen = torch.Generator().manual_seed(3)
    rotation, _ = torch.linalg.qr(torch.randn(N, N, generator=gen, dtype=torch.float64))
    eigenvalues = torch.cat([torch.tensor([1000.0]), 0.5 + 1.5 * torch.rand(N - 1, generator=gen)])
    hessian = rotation @ torch.diag(eigenvalues.double()) @ rotation.T
    loss, params = _quadratic_loss(hessian)
    m = hessian_anisotropy(loss, params, steps=12, generator=gen)
    assert m["lambda_max"] == pytest.approx(1000.0, rel=1e-8)
    # one probe of a non-diagonal Hessian: the top direction's weight is replaced by 1/n, so
    # only the bulk's weighted mean is noisy (plain one-probe quadrature is off by 2x here)
    assert m["mean_abs_eigenvalue"] == pytest.approx(float(eigenvalues.abs().mean()), rel=0.03)


def test_hessian_of_a_model_leaves_out_unused_parameters():
    used = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    unused = torch.ones(100, dtype=torch.float64, requires_grad=True)
    loss = (used.square() * torch.tensor([1.0, 10.0], dtype=torch.float64)).sum()
    m = hessian_anisotropy(loss, [used, unused], 4, torch.Generator().manual_seed(0))
    assert m["lambda_max"] == pytest.approx(20.0) and m["mean_abs_eigenvalue"] == pytest.approx(11)


def _driven(grads, **kwargs):
    """Feed the gradient estimator the given gradients, one per step; the p after each step."""
    w = torch.zeros(6, requires_grad=True)
    opt = geoptim.LPSGDM([w], lr=0.1)
    sched = geoptim.CurvaturePScheduler(opt, p_max=6.0, p_min=3.0, **kwargs)
    values = []
    for grad in grads:
        w.grad = grad
        sched.step()
        values.append(opt.param_groups[0]["p"])
        assert values[-1] == sched.p
    return values, sched


def _random_gradients(gen, count):
    """Gradients of random spread and scale, with zero, tiny, huge, NaN and inf ones mixed in."""
    specials = [torch.zeros(6), torch.full((6,), 1e-30), torch.full((6,), 1e30)]
    specials += [torch.tensor([math.nan] + [1.0] * 5), torch.tensor([math.inf] + [1.0] * 5)]
    grads = []
    for k in range(count):
        if k % 7 == 3:
            grads.append(specials[(k // 7) % len(specials)])
        else:
            spread = torch.rand(1, generator=gen) * 6
            grads.append(
                torch.randn(6, generator=gen) * torch.exp(spread * torch.rand(6, generator=gen))
            )
    return grads


@pytest.mark.parametrize("a_hi", [None, 2.0, 1e6])
@pytest.mark.parametrize("smoothing", [0.0, 0.7])
def test_p_stays_in_range_on_degenerate_gradients(a_hi, smoothing):
    gen = torch.Generator().manual_seed(7)
    values, _ = _driven(
        _random_gradients(gen, 120), interval=1, a_hi=a_hi, smoothing=smoothing, beta2=0.5
    )
    assert all(3.0 <= p <= 6.0 for p in values)
    assert len(set(values)) > 5  # it does move


def test_zero_and_nan_gradients_leave_p_unchanged_and_restart_the_average():
    spread, other = torch.tensor([10.0, 1, 1, 1, 1, 1]), torch.tensor([3.0, 1, 1, 1, 1, 1])
    grads = [spread] * 2 + [torch.zeros(6)] * 2 + [spread * math.nan, spread * math.inf]
    values, _ = _driven([*grads, other], interval=1, a_hi=6.0, beta2=0.0)  # v = g**2
    assert 3.0 < values[0] < 6.0 and values[1:6] == [values[0]] * 5
    assert values[6] == pytest.approx(3 + 3 * math.log(6 * 14 / 64) / math.log(6))
    # with memory: after the NaN the EMA restarts, as if the run began there
    values, sched = _driven([*grads, other, other], interval=1, a_hi=6.0, beta2=0.5)
    fresh, _ = _driven([other] * 2, interval=1, a_hi=6.0, beta2=0.5)
    assert values[-2:] == fresh and not sched.second_moments[0].isnan().any()


def test_never_increase_never_increases_p():
    def spike(height):
        return torch.tensor([height, 1.0, 1.0, 1.0, 1.0, 1.0])

    heights = [30, 10, 3, 1, 3, 10, 30, 1, 20, 2, 40, 1]
    grads = [spike(h) for h in heights]
    free, _ = _driven(grads, interval=1, beta2=0.0)
    monotone, _ = _driven(grads, interval=1, beta2=0.0, never_increase=True)
    assert any(b > a for a, b in itertools.pairwise(free))  # the free schedule does rise
    assert all(b <= a for a, b in itertools.pairwise(monotone))
    assert monotone == list(itertools.accumulate(free, min))


def test_calibration_from_the_first_estimate_and_the_map():
    values, sched = _driven([torch.tensor([9.0, 1, 1, 1, 1, 1])] * 2, interval=2, beta2=0.0)
    assert values == [6.0, 6.0]  # p_max before and at the first estimate
    assert sched.a_hi == pytest.approx(6 * 86 / 14**2)
    assert sched.get_p(1.0) == 3.0 and sched.get_p(1e9) == 6.0
    assert sched.get_p(math.sqrt(sched.a_hi)) == pytest.approx(4.5)  # halfway on a log scale


def test_an_anisotropy_falling_along_a_cosine_gives_the_cosine_schedule():
    """The map is linear in log a: a log anisotropy on a half cosine from a_hi to a_lo gives
    CosinePScheduler's p (the sense in which cosine annealing is a special case)."""
    w = torch.zeros(1, requires_grad=True)
    cosine = geoptim.CosinePScheduler(geoptim.LPSGDM([w]), p_max=8.0, T_max=10)
    sched = geoptim.CurvaturePScheduler(geoptim.LPSGDM([w]), 8.0, a_lo=2.0, a_hi=500.0)
    for k in range(12):
        fraction = (1 + math.cos(math.pi * min(k, 10) / 10)) / 2
        anisotropy = math.exp(math.log(2.0) + fraction * math.log(250.0))
        assert sched.get_p(anisotropy) == pytest.approx(cosine.get_p(k), abs=1e-12)


def _mlp_run(estimator, steps, resume_at=None):
    """LPSGDM + CurvaturePScheduler on a small MLP; with ``resume_at``, everything is saved
    at that step and the run continues from fresh objects loaded from the saved state."""

    def build(p_max):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        opt = geoptim.LPSGDM(model.parameters(), lr=0.05, p=p_max)
        kwargs = {"estimator": estimator, "interval": 3, "smoothing": 0.5, "lanczos_steps": 4}
        kwargs["a_hi"] = 49.0  # the number of parameters, the largest possible anisotropy
        return model, opt, geoptim.CurvaturePScheduler(opt, p_max=p_max, **kwargs)

    model, opt, sched = build(6.0)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 4, generator=gen, dtype=torch.float64) for _ in range(steps)]
    ps = []
    for step, x in enumerate(batches):
        if step == resume_at:
            buffer = io.BytesIO()
            torch.save([model.state_dict(), opt.state_dict(), sched.state_dict()], buffer)
            buffer.seek(0)
            model, opt, sched = build(9.0)  # different settings, overridden by the state
            model_state, opt_state, sched_state = torch.load(buffer)
            model.load_state_dict(model_state)
            opt.load_state_dict(opt_state)
            sched.load_state_dict(sched_state)

        def loss(x=x, model=model):
            return (model(x).squeeze(1) - x.sum(1).sin()).square().mean()

        opt.zero_grad()
        loss().backward()
        opt.step()
        sched.step(loss) if estimator == "hessian" else sched.step()
        ps.append(opt.param_groups[0]["p"])
    return ps, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_state_round_trip_resumes_exactly(estimator):
    ps, weights = _mlp_run(estimator, 20)
    resumed_ps, resumed_weights = _mlp_run(estimator, 20, resume_at=8)
    assert resumed_ps == ps
    assert len(set(ps[8:])) > 1  # p moves after the resume
    assert all(torch.equal(a, b) for a, b in zip(weights, resumed_weights))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_with_lpsgdm_changes_nothing_but_p(estimator):
    """Training with the scheduler equals training with p set by hand to its values (weights,
    optimizer state), and the scheduler leaves the gradients as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    twin = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    twin.load_state_dict(model.state_dict())
    opt = geoptim.LPSGDM(model.parameters(), lr=0.02, p=5.0)
    twin_opt = geoptim.LPSGDM(twin.parameters(), lr=0.02, p=5.0)
    sched = geoptim.CurvaturePScheduler(opt, p_max=5.0, estimator=estimator, interval=4, a_hi=97.0)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        x = torch.randn(32, 4, generator=gen)
        y = x[:, :1] * 3 - x[:, 1:2]

        def loss(x=x, y=y, net=model):
            return (net(x) - y).square().mean()

        for net, optimizer in ((model, opt), (twin, twin_opt)):
            optimizer.zero_grad()
            loss(net=net).backward()
            optimizer.step()
        losses.append(loss().item())
        grads = [p.grad.clone() for p in model.parameters()]
        sched.step(loss) if estimator == "hessian" else sched.step()
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
        twin_opt.param_groups[0]["p"] = sched.get_last_p()[0]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    for a, b in zip(opt.state.values(), twin_opt.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert 2.0 <= sched.p < 5.0 and losses[-1] < 0.5 * losses[0]


def test_hessian_closure_is_called_only_on_estimation_steps():
    w = torch.ones(3, requires_grad=True)
    sched = geoptim.CurvaturePScheduler(geoptim.LPSGDM([w]), 6.0, estimator="hessian", interval=4)
    calls = []

    def loss():
        calls.append(sched.last_epoch)
        return (w**4).sum()

    for _ in range(9):
        sched.step(loss)
    assert calls == [4, 8] and sched.last_measurement["lambda_max"] == pytest.approx(12.0)


def test_bfloat16_gradients_accumulate_in_float32():
    w = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    sched = geoptim.CurvaturePScheduler(geoptim.LPSGDM([w]), 6.0, interval=1, a_hi=4.0)
    w.grad = torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.bfloat16)
    sched.step()
    assert sched.second_moments[0].dtype == torch.float32
    assert sched.last_measurement["anisotropy"] == pytest.approx(4 * 12 / 36)


def test_step_arguments():
    w = torch.zeros(2, requires_grad=True)
    hessian = geoptim.CurvaturePScheduler(geoptim.LPSGDM([w]), 6.0, estimator="hessian", interval=1)
    with pytest.raises(ValueError, match="closure"):
        hessian.step()
    w.grad = torch.ones(2)
    gradient = geoptim.CurvaturePScheduler(geoptim.LPSGDM([w]), 6.0)
    with pytest.raises(ValueError, match="no closure"):
        gradient.step(lambda: w.sum())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p_max": 1.5}, "p_max"),
        ({"p_max": math.inf}, "p_max"),
        ({"p_max": 3.0, "p_min": 4.0}, "p_max"),
        ({"p_max": 6.0, "estimator": "power"}, "estimator"),
        ({"p_max": 6.0, "interval": 0}, "interval"),
        ({"p_max": 6.0, "smoothing": 1.0}, "smoothing"),
        ({"p_max": 6.0, "beta2": -0.1}, "beta2"),
        ({"p_max": 6.0, "a_lo": 0.5}, "a_lo"),
        ({"p_max": 6.0, "a_hi": 1.0}, "a_hi"),
        ({"p_max": 6.0, "lanczos_steps": 0}, "lanczos_steps"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        geoptim.CurvaturePScheduler(geoptim.LPSGDM([torch.zeros(1, requires_grad=True)]), **kwargs)


def test_needs_an_lp_optimizer():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="'p'"):
        geoptim.CurvaturePScheduler(opt, p_max=6.0)


def _fsdp2_worker(rank, port, outdir):
    """Rank ``rank`` of 2: the gradient estimate of an FSDP2-sharded toy model against a
    single-process copy trained on the same global batches."""
    import json

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from tests.distributed.checks import global_batch, local_batch, loss_fn, shard_toy, toy_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = shard_toy(toy_model(), init_device_mesh("cpu", (2,)))
    reference = toy_model()
    pairs = []
    for net in (model, reference):
        opt = geoptim.LPSGDM(net.parameters(), lr=0.05, p=6.0)
        pairs.append((net, opt, geoptim.CurvaturePScheduler(opt, 6.0, interval=1, a_hi=100.0)))
    rows = []
    for step in range(3):
        for (net, opt, sched), batch in zip(pairs, (local_batch(step), global_batch(step))):
            opt.zero_grad()
            loss_fn(net, batch).backward()
            opt.step()
            sched.step()
        sharded_sched, reference_sched = pairs[0][2], pairs[1][2]
        buffers = list(sharded_sched.second_moments.values())
        rows.append(
            {
                "sharded": sharded_sched.last_measurement["anisotropy"],
                "reference": reference_sched.last_measurement["anisotropy"],
                "naive": gradient_anisotropy(buffers),  # this rank's shards as whole tensors
                "p": [sharded_sched.p, reference_sched.p],
            }
        )
    with open(f"{outdir}/rank{rank}.json", "w") as file:
        json.dump(rows, file)
    dist.destroy_process_group()


@pytest.mark.slow
def test_gradient_estimate_of_an_fsdp2_model_equals_the_unsharded_one(tmp_path):
    import json

    import torch.distributed as dist
    import torch.multiprocessing as mp

    from tests.distributed.harness import free_port

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed gloo")
    mp.spawn(_fsdp2_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        rows = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for row in rows:
            assert row["sharded"] == pytest.approx(row["reference"], rel=1e-10)
            assert row["p"][0] == pytest.approx(row["p"][1], rel=1e-10)
            assert abs(row["naive"] - row["reference"]) > 1e-3 * row["reference"]
        assert rows[-1]["p"][1] < 6.0
