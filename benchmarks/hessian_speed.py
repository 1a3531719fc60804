"""Top Hessian eigenvalue: geoptim.analysis (Lanczos on torch.func products) against a
PyHessian-style baseline (power iteration on autograd double backward).

The baseline builds the gradient graph once (``create_graph=True``) and runs power iteration
``v <- H v / ||H v||`` with ``H v = autograd.grad(g, params, v, retain_graph=True)``, stopping when
the Rayleigh quotient changes by less than ``tol`` relative (PyHessian's rule, tol 1e-3, at most
100 iterations). geoptim runs Lanczos with full reorthogonalisation until the top Ritz value's
estimated relative error is below ``--tol`` (default 1e-3, the baseline's). Both start from the
model in training mode on one batch. Prints the times, both eigenvalues' relative errors
against a reference (Lanczos to 1e-10), the ratio baseline / geoptim, and the cost of one
product for each method; wall and process CPU times (run with ``OMP_NUM_THREADS=1`` on a busy
machine: CPU time then measures the work alone).

    .venv/bin/python benchmarks/hessian_speed.py [--model mlp|resnet] [--batch 256] [--tol 1e-3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from geoptim.analysis import HessianOperator, hessian_top_eigenvalues
from geoptim.bench.models import DigitsResNet


def make_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A ~1M-parameter model and its input shape: a BatchNorm MLP on 64 features, or the digits
    ResNet at width 128 on 1 x 8 x 8 images."""
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(64, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
            nn.Linear(1024, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
            nn.Linear(1024, 10),
        )
        return model, (64,)
    if name == "resnet":
        return DigitsResNet(width=128), (1, 8, 8)
    raise ValueError(f"unknown model {name!r}")


def power_iteration_baseline(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], tol: float = 1e-3,
    max_iter: int = 100, seed: int = 0,
) -> tuple[float, int]:
    """PyHessian-style top eigenvalue: power iteration on double-backward products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(data[0]), data[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    eigenvalue, iterations = 0.0, 0
    for iterations in range(1, max_iter + 1):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        new = float(sum((x * y).sum() for x, y in zip(hv, v, strict=True)))
        v = [x.detach() for x in hv]
        if iterations > 1 and abs(new - eigenvalue) / (abs(eigenvalue) + 1e-6) < tol:
            eigenvalue = new
            break
        eigenvalue = new
    return eigenvalue, iterations


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Median wall time, median process CPU time (robust to other processes on a shared
    machine; equal to the wall time on one idle thread) and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "resnet"], default="mlp")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="geoptim tolerance on the estimated relative error (default: 1e-3)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, shape = make_model(args.model)
    model.train()
    data = (torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,)))
    n = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {n:,} parameters, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")

    # warm-up (first-call costs of torch.func and autograd)
    hessian_top_eigenvalues(model, F.cross_entropy, data, max_iter=2)
    power_iteration_baseline(model, data, max_iter=2)

    wall_ours, cpu_ours, ours = timed(
        lambda: hessian_top_eigenvalues(model, F.cross_entropy, data, tol=args.tol),
        args.repeats)
    wall_base, cpu_base, (base_value, base_iters) = timed(
        lambda: power_iteration_baseline(model, data), args.repeats)
    reference = float(hessian_top_eigenvalues(model, F.cross_entropy, data, tol=1e-10).values[0])
    ours_value = float(ours.values[0])
    print(f"reference lambda_max = {reference:.8g}")
    print(f"geoptim Lanczos : {wall_ours:6.2f} s wall {cpu_ours:6.2f} s cpu  "
          f"lambda_max = {ours_value:.8g} (rel. error {abs(ours_value / reference - 1):.1e}, "
          f"{ours.n_products} products)")
    print(f"power iteration : {wall_base:6.2f} s wall {cpu_base:6.2f} s cpu  "
          f"lambda_max = {base_value:.8g} (rel. error {abs(base_value / reference - 1):.1e}, "
          f"{base_iters} products)")
    print(f"ratio baseline / geoptim: {wall_base / wall_ours:.2f} (wall), "
          f"{cpu_base / cpu_ours:.2f} (cpu)")

    v = torch.randn(n)
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(data[0]), data[1]), params,
                                create_graph=True)
    pieces = [x.view(p.shape) for x, p in zip(torch.split(v, [p.numel() for p in params]),
                                                params, strict=True)]
    per_product = {"double backward (graph kept)": lambda: torch.autograd.grad(
        grads, params, pieces, retain_graph=True)}
    for method in ("reverse", "forward"):
        op = HessianOperator(model, F.cross_entropy, data, method=method)
        op.matvec(v)
        per_product[f"geoptim {method}"] = lambda op=op: op.matvec(v)
    for name, fn in per_product.items():
        wall, cpu, _ = timed(fn, 5 * args.repeats)
        print(f"one product, {name:28s}: {1e3 * wall:7.1f} ms wall {1e3 * cpu:7.1f} ms cpu")


if __name__ == "__main__":
    main()
