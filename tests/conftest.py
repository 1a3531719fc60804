"""Test-wide settings: one intra-op thread (the tests use small tensors, where thread
start-up costs more than it saves, and CI has two cores)."""

import torch

torch.set_num_threads(1)
