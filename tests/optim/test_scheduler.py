import itertools
import math

import pytest
import torch

import geoptim

# these tests step schedulers without training; torch warns that optimizer.step() was not called
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")


def _opt():
    return geoptim.LPSGDM([torch.zeros(3, requires_grad=True)], lr=0.1)


def test_cosine_p_schedule_values():
    opt = _opt()
    sched = geoptim.CosinePScheduler(opt, p_max=8.0, T_max=10)
    assert opt.param_groups[0]["p"] == 8.0  # k = 0
    values = [opt.param_groups[0]["p"]]
    for _ in range(14):
        sched.step()
        values.append(opt.param_groups[0]["p"])
    assert values[5] == pytest.approx(5.0)  # k = T_max/2: the midpoint of [2, 8]
    assert values[10] == 2.0 and values[14] == 2.0  # k >= T_max: p_min
    assert values[3] == pytest.approx(2 + 6 * (1 + math.cos(math.pi * 3 / 10)) / 2)
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert sched.get_last_p() == [2.0]


def test_cosine_p_scheduler_custom_p_min_and_groups():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = geoptim.LPSGDM([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    sched = geoptim.CosinePScheduler(opt, p_max=6.0, T_max=4, p_min=3.0)
    for _ in range(4):
        sched.step()
    assert [g["p"] for g in opt.param_groups] == [3.0, 3.0]


def test_cosine_p_scheduler_state_round_trip():
    opt = _opt()
    sched = geoptim.CosinePScheduler(opt, p_max=6.0, T_max=8)
    for _ in range(3):
        sched.step()
    saved = sched.state_dict()
    fresh_opt = _opt()
    fresh = geoptim.CosinePScheduler(fresh_opt, p_max=9.0, T_max=100)
    fresh.load_state_dict(saved)
    assert fresh.state_dict() == saved
    assert fresh_opt.param_groups[0]["p"] == opt.param_groups[0]["p"]
    sched.step()
    fresh.step()
    assert fresh_opt.param_groups[0]["p"] == opt.param_groups[0]["p"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p_max": 1.5, "T_max": 5}, "p_max"),
        ({"p_max": math.inf, "T_max": 5}, "p_max"),
        ({"p_max": 6.0, "T_max": 0}, "T_max"),
        ({"p_max": 6.0, "T_max": 5, "p_min": 1.0}, "p_min"),
        ({"p_max": 3.0, "T_max": 5, "p_min": 4.0}, "p_max"),
    ],
)
def test_cosine_p_scheduler_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        geoptim.CosinePScheduler(_opt(), **kwargs)


def test_cosine_p_scheduler_needs_an_lp_optimizer():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="'p'"):
        geoptim.CosinePScheduler(opt, p_max=6.0, T_max=5)


def _p_after(sched_steps: int, **kwargs) -> float:
    opt = _opt()
    sched = geoptim.CosinePScheduler(opt, **kwargs)
    for _ in range(sched_steps):
        sched.step()
    return opt.param_groups[0]["p"]


def test_cosine_p_scheduler_is_a_torch_lr_scheduler_that_leaves_lr_alone():
    opt = _opt()
    sched = geoptim.CosinePScheduler(opt, p_max=6.0, T_max=4)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    for _ in range(3):
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.1 and sched.get_last_lr() == [0.1]


def test_cosine_p_scheduler_last_epoch_resumes_like_torch_schedulers():
    # torch's convention: a scheduler built with last_epoch=j stands where one built with -1
    # stands after j + 1 steps.
    for j in range(-1, 7):
        opt = _opt()
        sched = geoptim.CosinePScheduler(opt, p_max=8.0, T_max=5, last_epoch=j)
        assert sched.last_epoch == j + 1
        assert opt.param_groups[0]["p"] == _p_after(j + 1, p_max=8.0, T_max=5)
        sched.step()
        assert opt.param_groups[0]["p"] == _p_after(j + 2, p_max=8.0, T_max=5)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(_opt(), T_max=5, last_epoch=-1)
    assert reference.last_epoch == 0  # the same convention, checked against torch itself


def test_cosine_p_scheduler_in_chained_scheduler_steps_lr_and_p_together():
    opt = _opt()
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    p_sched = geoptim.CosinePScheduler(opt, p_max=6.0, T_max=4)
    chained = torch.optim.lr_scheduler.ChainedScheduler([lr_sched, p_sched])
    for k in range(1, 5):
        chained.step()
        assert opt.param_groups[0]["p"] == pytest.approx(
            2 + 4 * (1 + math.cos(math.pi * k / 4)) / 2
        )
        assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * k / 4)))


def test_cosine_p_scheduler_in_sequential_lr_starts_at_its_milestone():
    opt = _opt()
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=2)
    p_sched = geoptim.CosinePScheduler(opt, p_max=6.0, T_max=4)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, p_sched], milestones=[2])
    ps, lrs = [opt.param_groups[0]["p"]], [opt.param_groups[0]["lr"]]
    for _ in range(6):
        seq.step()
        ps.append(opt.param_groups[0]["p"])
        lrs.append(opt.param_groups[0]["lr"])
    # p stays at p_max during the warm-up, then runs its schedule from k = 0 at the milestone;
    # the lr moves 0.05 -> 0.075 under LinearLR and stays there once the p scheduler takes over
    expected = [6.0, 6.0] + [2 + 4 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(5)]
    assert ps == pytest.approx(expected)
    assert lrs == pytest.approx([0.05, 0.075] + [0.075] * 5)
