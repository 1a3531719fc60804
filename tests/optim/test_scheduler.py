import itertools
import math

import pytest
import torch

import geoptim


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
