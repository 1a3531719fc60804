"""Single-process checks of the sharding declarations in :mod:`geoptim._stats` (the
multi-process behaviour is in :mod:`tests.distributed.test_distributed`)."""

from __future__ import annotations

import pytest
import torch

import geoptim
from geoptim import _stats


def test_plain_tensors_are_whole():
    tensors = [torch.ones(3), torch.ones(2, 2)]
    assert _stats.layout_of(tensors[0]) is None
    with _stats.sharded([None, None]):
        torch.testing.assert_close(
            _stats.per_tensor_sums("sumsq", tensors), torch.tensor([3.0, 4.0])
        )
        assert _stats.global_numels(tensors) == [3, 4]


def test_declared_shards_must_match_the_tensors():
    shard = _stats.Sharding(mesh=None, dims=(0,), numel=6, local_shape=torch.Size([3]))
    with _stats.sharded([shard]), pytest.raises(RuntimeError, match="do not match"):
        _stats.per_tensor_sums("abs", [torch.ones(3), torch.ones(3)])
    with _stats.sharded([shard]), pytest.raises(RuntimeError, match="do not match"):
        _stats.global_numels([torch.ones(4)])
    with _stats.sharded([shard]):
        assert _stats.global_numels([torch.ones(3)]) == [6]


def test_fsdp1_parameters_get_a_clear_error_only_where_statistics_are_needed():
    def flat_param() -> torch.nn.Parameter:
        param = torch.nn.Parameter(torch.randn(5))
        param._fsdp_flattened = True  # what FSDP1 marks its FlatParameters with
        param.grad = torch.randn(5)
        return param

    with pytest.raises(RuntimeError, match="fully_shard"):
        geoptim.SepNorm([flat_param()]).step()
    with pytest.raises(RuntimeError, match="fully_shard"):
        geoptim.Adan([flat_param()], max_grad_norm=1.0).step()
    with pytest.raises(RuntimeError, match="fully_shard"):
        geoptim.AdamWAGR([flat_param()]).step()
    geoptim.Lion([flat_param()]).step()  # element-wise: correct on flattened shards


def test_declaration_covers_every_parameter_and_the_tensors_those_present():
    """The kernels pass the tensors of the parameters marked present, in order."""
    shards = [
        _stats.Sharding(mesh=None, dims=(0,), numel=6, local_shape=torch.Size([3])),
        _stats.Sharding(mesh=None, dims=(0,), numel=8, local_shape=torch.Size([2, 2])),
    ]
    with _stats.sharded(shards, present=[False, True]):
        assert _stats.global_numels([torch.ones(2, 2)]) == [8]
        with pytest.raises(RuntimeError, match="do not match"):
            _stats.global_numels([torch.ones(3), torch.ones(2, 2)])


def test_parameter_labels_name_parameters_where_known():
    model = torch.nn.Linear(2, 3)
    named = geoptim.SepNorm(model.named_parameters()).param_groups[0]
    assert _stats.parameter_labels(named, "param group 0, ") == [
        "param group 0, parameter 0 ('weight')",
        "param group 0, parameter 1 ('bias')",
    ]
    plain = geoptim.SepNorm(model.parameters()).param_groups[0]
    assert _stats.parameter_labels(plain) == ["parameter 0", "parameter 1"]
