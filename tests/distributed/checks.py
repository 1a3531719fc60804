"""The distributed checks, run inside spawned gloo process groups (see :mod:`harness`).

Every parity check trains a sharded or data-parallel copy of a small float64 network and a
single-process copy on the same global batch, and compares all parameters after several steps.
The network has uneven shards on two ranks, empty shards (a 1-row weight and a 1-element bias),
and one ``Shard(1)`` weight. Statistic-based optimizers are also run "naively" (each rank treating
its shard as a whole tensor) to show that the parity check can fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecisionPolicy, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode
from torch.nn.parallel import DistributedDataParallel

import geoptim
from geoptim import _stats
from tests.distributed.suites import SUITES

# name -> (class, keyword arguments, needs statistics over whole tensors or several tensors)
CASES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any], bool]] = {
    "lpsgdm": (geoptim.LPSGDM, {"lr": 0.05, "p": 6.0}, False),
    "lpsgd": (geoptim.LPSGD, {"lr": 0.05, "p": 4.0}, False),
    "lion": (geoptim.Lion, {"lr": 0.01}, False),
    "signum": (geoptim.Signum, {"lr": 0.01}, False),
    "sepnorm": (geoptim.SepNorm, {"lr": 0.01}, True),
    "sepnorm_element": (geoptim.SepNorm, {"lr": 0.01, "grouping": "element"}, False),
    "sepnorm_global": (geoptim.SepNorm, {"lr": 0.01, "grouping": "global"}, True),
    "ortsepnorm": (geoptim.OrtSepNorm, {"lr": 0.01}, True),
    "ortsepnorm_single": (geoptim.OrtSepNorm, {"lr": 0.01, "foreach": False}, True),
    "ortsepnorm_global": (geoptim.OrtSepNorm, {"lr": 0.01, "grouping": "global"}, True),
    "normsgd": (geoptim.NormSGD, {"lr": 0.1}, True),
    "adan": (geoptim.Adan, {"lr": 0.01}, False),
    "adan_clip": (geoptim.Adan, {"lr": 0.01, "no_prox": True, "max_grad_norm": 0.05}, True),
    "adamw_agr": (geoptim.AdamWAGR, {"lr": 0.01}, True),
    "adamw_agr_single": (geoptim.AdamWAGR, {"lr": 0.01, "foreach": False}, True),
    "adan_agr": (geoptim.AdanAGR, {"lr": 0.01, "max_grad_norm": 0.05}, True),
}
# Statistics over several tensors of a group (or all groups): under ZeroRedundancyOptimizer each
# rank holds whole tensors but only part of each group, so these cover the rank's part only.
GROUP_WIDE = {"sepnorm_global", "ortsepnorm_global", "normsgd", "adan_clip", "adan_agr"}
STEPS = 3
WEIGHT_DECAY = 0.1
ATOL = 1e-10


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    cls, kwargs, _ = CASES[name]
    return cls(geoptim.param_groups(model, WEIGHT_DECAY), **kwargs)


def toy_model(dtype: torch.dtype = torch.float64) -> nn.Module:
    """Weights 127x64 (uneven shards of 4096 and 4032 elements, on both sides of the fused
    kernels' size threshold), 4x127, 3x4 (sharded along dim 1), 1x3 (an empty shard on rank 1);
    biases 127, 4, 3 (uneven), 1 (empty on rank 1)."""
    torch.manual_seed(0)
    layers = [nn.Linear(64, 127), nn.Tanh(), nn.Linear(127, 4), nn.Tanh()]
    layers += [nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)]
    return nn.Sequential(*layers).to(dtype)


def shard_toy(model: nn.Module, mesh: DeviceMesh, **kwargs: Any) -> nn.Module:
    """FSDP2 (HSDP on a 2-D mesh): one unit per linear layer, the 3x4 weight on ``Shard(1)``
    (FSDP2 needs even shards along dims other than 0)."""

    def placement(param: nn.Parameter) -> Shard:
        return Shard(1) if param.shape == (3, 4) else Shard(0)

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh, shard_placement_fn=placement, **kwargs)
    return fully_shard(model, mesh=mesh, shard_placement_fn=placement, **kwargs)


def global_batch(step: int, size: int = 8, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(size, 64, generator=gen, dtype=dtype)
    return x, torch.sin(x.sum(1, keepdim=True))


def local_batch(step: int, dtype: torch.dtype = torch.float64):
    """This rank's equal slice of the global batch (a different one on every rank)."""
    x, y = global_batch(step, dtype=dtype)
    n = len(x) // dist.get_world_size()
    rank = dist.get_rank()
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def full(t: Tensor) -> Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def max_diff(model: nn.Module, reference: nn.Module) -> float:
    return max(
        (full(p.detach()) - full(q.detach())).abs().max().item()
        for p, q in zip(model.parameters(), reference.parameters())
        if q.numel()
    )


def assert_close(model: nn.Module, reference: nn.Module, what: str, atol: float = ATOL) -> None:
    diff = max_diff(model, reference)
    assert diff <= atol, f"{what}: max |distributed - single process| = {diff:.3g}"


@contextmanager
def count_collectives() -> Iterator[dict[str, int]]:
    """Counts the collectives issued in the block (``"total"``), the all-reduces among them
    (``"all_reduce"``) and the calls that reduced sharded statistics in :mod:`geoptim._stats`
    (``"reductions"``)."""
    counts = {"total": 0, "all_reduce": 0, "reductions": 0}
    reduce = _stats._all_reduce_shards

    def counted(*args: Any) -> Tensor:
        counts["reductions"] += 1
        return reduce(*args)

    with CommDebugMode() as comm, mock.patch.object(_stats, "_all_reduce_shards", counted):
        yield counts
    counts["total"] = comm.get_total_counts()
    counts["all_reduce"] = sum(
        n for op, n in comm.get_comm_counts().items() if "allreduce" in str(op)
    )


def naive_step(name: str, model: nn.Module) -> list[Tensor]:
    """One step of the optimizer on plain copies of this rank's shards, as a library unaware of
    sharding would take it; the resulting whole tensors, in ``model.parameters()`` order."""
    groups = geoptim.param_groups(model, WEIGHT_DECAY)
    copies: dict[Tensor, Tensor] = {}
    for group in groups:
        group["params"] = [copies.setdefault(p, shard_copy(p)) for p in group["params"]]
    cls, kwargs, _ = CASES[name]
    cls(groups, **kwargs).step()
    return [full(_stats.like(p, copies[p].detach())) for p in model.parameters()]


def shard_copy(param: Tensor) -> Tensor:
    """A plain tensor holding this rank's shard of ``param`` and of its gradient."""
    copy = _stats.local(param).detach().clone().requires_grad_()
    copy.grad = _stats.local(param.grad).clone()
    return copy


# -------------------------------------------------------------------------------- parity


def parity(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    expect: Callable[[dict[str, int]], bool],
    sharded: bool,
) -> None:
    """Train ``model`` (wrapped) and a single-process copy for :data:`STEPS` steps on the same
    global batches and compare; ``expect`` checks the collectives of each ``step()``
    (:func:`count_collectives`); ``sharded``: also check that a naive step would be wrong."""
    reference = toy_model()
    ref_opt = make_optimizer(name, reference)
    for step in range(STEPS):
        loss_fn(model, local_batch(step)).backward()
        loss_fn(reference, global_batch(step)).backward()
        naive = naive_step(name, model) if sharded and step == 0 else None
        with count_collectives() as counts:
            optimizer.step()
        ref_opt.step()
        assert expect(counts), f"{name}: collectives in step() {counts}"
        if naive is not None:
            naive_diff = max(
                (n - q.detach()).abs().max().item()
                for n, q in zip(naive, reference.parameters())
                if q.numel()
            )
            needs_stats = CASES[name][2]
            assert (naive_diff > 1e-6) == needs_stats, f"{name}: naive diff {naive_diff:.3g}"
        optimizer.zero_grad()
        ref_opt.zero_grad()
    assert_close(model, reference, name)


def one_per_bucket(needs_stats: bool) -> Callable[[dict[str, int]], bool]:
    """Every collective is one statistics reduction (the network's shards all lie on one mesh
    dimension: one bucket); there are some exactly when the optimizer needs statistics."""
    return lambda c: c["total"] == c["reductions"] and (c["reductions"] > 0) == needs_stats


def no_collectives(counts: dict[str, int]) -> bool:
    return counts["total"] == 0


def no_all_reduce(counts: dict[str, int]) -> bool:
    """ZeroRedundancyOptimizer broadcasts the updated parameters; the optimizer adds nothing."""
    return counts["all_reduce"] == 0


def _fsdp2_parity(mesh_shape: tuple[int, ...]) -> None:
    names = ("replicate", "shard")[-len(mesh_shape) :]
    mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=names)
    for name, (_, _, needs_stats) in CASES.items():
        model = shard_toy(toy_model(), mesh)
        parity(name, model, make_optimizer(name, model), one_per_bucket(needs_stats), True)


def fsdp2_parity(_: Path) -> None:
    """FSDP2 on all ranks of a 1-D mesh."""
    _fsdp2_parity((dist.get_world_size(),))


def hsdp_parity(_: Path) -> None:
    """HSDP on a 2x2 mesh: replicated along mesh dimension 0, sharded along dimension 1."""
    _fsdp2_parity((2, 2))


def ddp_parity(_: Path) -> None:
    for name in CASES:
        model = DistributedDataParallel(toy_model())
        parity(name, model, make_optimizer(name, model), no_collectives, sharded=False)


def zero_parity(_: Path) -> None:
    for name, (cls, kwargs, _) in CASES.items():
        if name in GROUP_WIDE:
            continue
        model = DistributedDataParallel(toy_model())
        groups = [*geoptim.param_groups(model, WEIGHT_DECAY), {"params": []}]
        zero = ZeroRedundancyOptimizer(groups, optimizer_class=cls, **kwargs)
        assert any(not g["params"] for g in zero.optim.param_groups), "no empty group on rank"
        parity(name, model, zero, no_all_reduce, sharded=False)
        zero.consolidate_state_dict(to=0)
        if dist.get_rank() == 0:
            reference = toy_model()
            ref_opt = cls([*geoptim.param_groups(reference, WEIGHT_DECAY)], **kwargs)
            for step in range(STEPS):
                loss_fn(reference, global_batch(step)).backward()
                ref_opt.step()
                ref_opt.zero_grad()
            expected, got = ref_opt.state_dict()["state"], zero.state_dict()["state"]
            assert expected.keys() == got.keys(), name
            for index, state in expected.items():
                for key, value in state.items():
                    torch.testing.assert_close(got[index][key], value, atol=ATOL, rtol=0)


# -------------------------------------------------------------------------------- statistics


def stats_buckets(_: Path) -> None:
    """Sums of DTensors on several placements: whole-tensor values, one collective per bucket."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(1)
    whole = [torch.randn(5, 3), torch.randn(4), torch.randn(3, 5), torch.randn(1)]
    placements = [Shard(0), Replicate(), Shard(1), Shard(0)]
    tensors = [distribute_tensor(t, mesh, [p]) for t, p in zip(whole, placements)]
    for kind, expected in (
        ("sumsq", [t.square().sum() for t in whole]),
        ("abs", [t.abs().sum() for t in whole]),
        ("dot", [(t * t.sin()).sum() for t in whole]),
    ):
        others = [t.sin() for t in tensors] if kind == "dot" else None
        with count_collectives() as counts:
            got = _stats.per_tensor_sums(kind, tensors, others)
        torch.testing.assert_close(got, torch.stack(expected))
        assert counts["total"] == 1, counts
    assert _stats.global_numels(tensors) == [15, 4, 15, 1]


def fsdp1_error(_: Path) -> None:
    """FSDP1's flattened parameters: a clear error for statistics, element-wise ones work."""
    for name in ("sepnorm", "normsgd", "adamw_agr", "adan_clip", "lion"):
        model = FullyShardedDataParallel(toy_model(), device_id=torch.device("cpu"))
        cls, kwargs, needs_stats = CASES[name]
        optimizer = cls(model.parameters(), **kwargs)
        loss_fn(model, local_batch(0)).backward()
        try:
            optimizer.step()
        except RuntimeError as error:
            assert needs_stats and "fully_shard" in str(error), f"{name}: {error}"
        else:
            assert not needs_stats, f"{name}: no error for FSDP1 parameters"


# -------------------------------------------------------------------------------- AMP


def grad_scaler_skip(_: Path) -> None:
    """An inf in rank 0's gradient shard makes both ranks skip the step and back off."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for name in ("sepnorm", "adamw_agr", "adan_clip"):
        model = shard_toy(toy_model(torch.float32), mesh)
        optimizer = make_optimizer(name, model)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        before = [full(p.detach()).clone() for p in model.parameters()]
        scaler.scale(loss_fn(model, local_batch(0, torch.float32))).backward()
        if dist.get_rank() == 0:
            _stats.local(next(model.parameters()).grad)[0, 0] = math.inf
        scaler.step(optimizer)
        scaler.update()
        after = [full(p.detach()) for p in model.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(before, after)), f"{name}: stepped"
        assert scaler.get_scale() == 2.0**9, f"{name}: scale {scaler.get_scale()}"
        optimizer.zero_grad()
        scaler.scale(loss_fn(model, local_batch(1, torch.float32))).backward()
        scaler.step(optimizer)
        after = [full(p.detach()) for p in model.parameters()]
        assert all(torch.isfinite(a).all() for a in after), name
        assert not all(torch.equal(a, b) for a, b in zip(before, after)), f"{name}: skipped"


def bf16_mixed_precision(_: Path) -> None:
    """bf16 compute with float32 sharded parameters: the update equals a single-process
    optimizer fed the same (gathered) gradients."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for name in ("sepnorm", "ortsepnorm", "normsgd", "adan_agr"):
        model = shard_toy(toy_model(torch.float32), mesh, mp_policy=policy)
        optimizer = make_optimizer(name, model)
        reference = toy_model(torch.float32)
        ref_opt = make_optimizer(name, reference)
        for step in range(STEPS):
            loss_fn(model, local_batch(step, torch.float32)).backward()
            for p, q in zip(model.parameters(), reference.parameters()):
                q.grad = full(p.grad)
            optimizer.step()
            ref_opt.step()
            optimizer.zero_grad()
        assert_close(model, reference, name, atol=1e-6)


# -------------------------------------------------------------------------------- checkpoints


def dcp_round_trip(outdir: Path) -> None:
    """get/set_optimizer_state_dict through torch.distributed.checkpoint save/load: the
    restored run continues exactly like the original; the state-initialising step leaves no NaN."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for name in ("ortsepnorm", "normsgd", "adan_agr", "adamw_agr"):
        model = shard_toy(toy_model(), mesh)
        optimizer = make_optimizer(name, model)
        for step in range(2):
            loss_fn(model, local_batch(step)).backward()
            optimizer.step()
            optimizer.zero_grad()
        path = outdir / f"dcp-{name}"
        dcp.save({"optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=path)

        restored = shard_toy(toy_model(), mesh)
        set_model_state_dict(restored, get_model_state_dict(model))
        restored_opt = make_optimizer(name, restored)
        state = get_optimizer_state_dict(restored, restored_opt)  # steps with zero grads, lr 0
        assert max_diff(restored, model) == 0, f"{name}: the initialising step moved weights"
        assert all(torch.isfinite(full(t)).all() for t in _tensors(state)), f"{name}: NaN"
        dcp.load({"optim": state}, checkpoint_id=path)
        set_optimizer_state_dict(restored, restored_opt, state)
        for m, opt in ((model, optimizer), (restored, restored_opt)):
            loss_fn(m, local_batch(2)).backward()
            opt.step()
        assert max_diff(restored, model) == 0, f"{name}: restored run differs"


def _tensors(tree: Any) -> list[Tensor]:
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in _tensors(value)]
    if isinstance(tree, (list, tuple)):
        return [t for value in tree for t in _tensors(value)]
    return []


# -------------------------------------------------------------------------------- entry


def train_entry(outdir: Path) -> None:
    """``geoptim train`` inside the running process group: DDP and FSDP2 runs of a digits
    network train alike."""
    import json

    from geoptim.cli import build_parser

    records = {}
    for wrapper in ("ddp", "fsdp2"):
        out = outdir / f"train-{wrapper}.json"
        argv = ["train", "--distributed", wrapper, "--task", "digits", "--optimizer"]
        argv += ["ortsepnorm", "--lr", "1e-2", "--weight-decay", "0.1", "--epochs", "1"]
        argv += ["--batches-per-epoch", "4", "--task-option", "model=vgg", "--out", str(out)]
        args = build_parser().parse_args(argv)
        assert args._run(args) == 0
        dist.barrier()
        records[wrapper] = json.loads(out.read_text())["epochs"]
    assert len(records["ddp"]) == len(records["fsdp2"]) == 1
    for ddp, fsdp in zip(records["ddp"], records["fsdp2"]):
        assert all(math.isfinite(v) for v in (*ddp.values(), *fsdp.values()))
        # the global training loss follows the same trajectory (evaluation uses each rank's
        # BatchNorm running statistics, which DDP and FSDP2 keep differently)
        assert math.isclose(ddp["mean_batch_loss"], fsdp["mean_batch_loss"], rel_tol=1e-5)


# -------------------------------------------------------------------------------- gradient presence

#: The optimizers that reduce statistics of sharded parameters (every kernel mode of AGR and of
#: the normalised directions, the per-tensor and the group-wide ones).
PRESENCE_CASES = (
    "sepnorm",
    "sepnorm_global",
    "ortsepnorm",
    "ortsepnorm_single",
    "normsgd",
    "adamw_agr",
    "adamw_agr_single",
    "adan_clip",
    "adan_agr",
)
TOY_NAMES = tuple(name for name, _ in toy_model().named_parameters())
#: rank -> the parameters whose gradient is None on it.
MISMATCHES: dict[str, dict[int, tuple[str, ...]]] = {
    "which": {0: ("2.weight",), 1: ("4.weight",)},
    "how many": {0: ("2.weight",), 1: ()},
    "none on one rank": {0: TOY_NAMES, 1: ()},
}


def _sharded_step(
    name: str, none_on: dict[int, tuple[str, ...]], mesh: DeviceMesh, named: bool = False
) -> None:
    """One step of a sharded toy model after setting the gradients ``none_on`` this rank to
    None (``named``: the optimizer built from ``named_parameters()``, in one group)."""
    model = shard_toy(toy_model(), mesh)
    if named:
        cls, kwargs, _ = CASES[name]
        optimizer = cls(model.named_parameters(), **kwargs)
    else:
        optimizer = make_optimizer(name, model)
    loss_fn(model, local_batch(0)).backward()
    parameters = dict(model.named_parameters())
    for parameter in none_on.get(dist.get_rank(), ()):
        parameters[parameter].grad = None
    optimizer.step()


def _presence_error(name: str, none_on: dict[int, tuple[str, ...]], **kwargs: Any) -> str:
    """The :class:`GradientPresenceError` message of that step, checked to be the same on
    every rank."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    message = ""
    try:
        _sharded_step(name, none_on, mesh, **kwargs)
    except _stats.GradientPresenceError as error:
        message = str(error)
    messages: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    assert message, f"{name}, {none_on}: no error on rank {dist.get_rank()}"
    assert len(set(messages)) == 1, f"{name}: the ranks raised different errors {messages}"
    assert "zero_grad(set_to_none=False)" in message, message  # the remedies
    assert "same `set_to_none` choice on every rank" in message, message
    return message


def presence_mismatch_raises(_: Path) -> None:
    """Ranks that differ in which parameters, or how many, have a gradient get the same clear
    error, naming exactly the parameters that differ in the first statistics reduced (those of
    param group 0; of every group for Adan's clip, which AdanAGR takes on the raw gradients),
    instead of a wrong result or a hang."""
    model = toy_model()
    names = {id(p): n for n, p in model.named_parameters()}
    labels = {
        names[id(p)]: f"param group {g}, parameter {i}"
        for g, group in enumerate(geoptim.param_groups(model, WEIGHT_DECAY))
        for i, p in enumerate(group["params"])
    }
    for name in PRESENCE_CASES:
        for scenario, none_on in MISMATCHES.items():
            message = _presence_error(name, none_on)
            differ = set(none_on[0]) ^ set(none_on[1])
            for parameter, label in labels.items():
                first = name.startswith("adan") or label.startswith("param group 0,")
                named = f"{label} has a gradient on 1 of {dist.get_world_size()} ranks" in message
                assert named == (first and parameter in differ), f"{name}, {scenario}: {message}"
    message = _presence_error("sepnorm", MISMATCHES["which"], named=True)
    assert "parameter 2 ('2.weight')" in message and "parameter 4 ('4.weight')" in message


def presence_equal_parity(_: Path) -> None:
    """The same gradients None on every rank: the single-process result exactly, with no
    collective beyond the statistics reductions; all None everywhere: nothing moves."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for name in (*PRESENCE_CASES, "lion", "sepnorm_element"):
        needs_stats = CASES[name][2]
        model = shard_toy(toy_model(), mesh)
        optimizer = make_optimizer(name, model)
        reference = toy_model()
        ref_opt = make_optimizer(name, reference)
        for step in range(STEPS):
            loss_fn(model, local_batch(step)).backward()
            loss_fn(reference, global_batch(step)).backward()
            dropped = ("2.weight", "4.bias") if step == 1 else TOY_NAMES if step == 2 else ()
            for m in (model, reference):
                for parameter in dropped:
                    dict(m.named_parameters())[parameter].grad = None
            before = [full(p.detach()).clone() for p in model.parameters()]
            with count_collectives() as counts:
                optimizer.step()
            ref_opt.step()
            assert one_per_bucket(needs_stats)(counts) or step == 2, f"{name}: {counts}"
            if step == 2:
                after = [full(p.detach()) for p in model.parameters()]
                assert all(torch.equal(a, b) for a, b in zip(before, after)), f"{name}: moved"
            optimizer.zero_grad()
            ref_opt.zero_grad()
        assert_close(model, reference, name)


def presence_elementwise_and_ddp(_: Path) -> None:
    """Optimizers without statistics reduce nothing, so ranks with different gradients just
    step (each shard on its own); under DDP no statistics are reduced at all."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for name in ("lion", "signum", "lpsgdm", "adan", "sepnorm_element"):
        for none_on in MISMATCHES.values():
            with count_collectives() as counts:
                _sharded_step(name, none_on, mesh)
            assert counts["reductions"] == 0, f"{name}: {counts}"
    for name in PRESENCE_CASES:
        model = DistributedDataParallel(toy_model())
        optimizer = make_optimizer(name, model)
        loss_fn(model, local_batch(0)).backward()
        if dist.get_rank() == 0:
            next(model.parameters()).grad = None
        with count_collectives() as counts:
            optimizer.step()
        assert counts["total"] == 0, f"{name}: {counts}"


# -------------------------------------------------------------------------------- HSDP


def hsdp_stats_buckets(_: Path) -> None:
    """On a 2x2 mesh, sums reduce over the sharded mesh dimensions only."""
    mesh = init_device_mesh("cpu", (2, 2))
    torch.manual_seed(2)
    whole = [torch.randn(4, 3), torch.randn(5), torch.randn(4, 4), torch.randn(3)]
    placements = [
        (Replicate(), Shard(0)),
        (Shard(0), Replicate()),
        (Shard(0), Shard(1)),
        (Replicate(), Shard(0)),
    ]
    tensors = [distribute_tensor(t, mesh, p) for t, p in zip(whole, placements)]
    with count_collectives() as counts:
        got = _stats.per_tensor_sums("sumsq", tensors)
    torch.testing.assert_close(got, torch.stack([t.square().sum() for t in whole]))
    assert counts["total"] == 4, counts  # mesh dim 1, mesh dim 0, and (0, 1) one dim at a time


def suite(name: str) -> dict[str, Callable[[Path], None]]:
    """The checks of suite ``name`` (:data:`tests.distributed.suites.SUITES`), by name."""
    return {check: globals()[check] for check in SUITES[name]}
