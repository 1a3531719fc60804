"""The analysis experiments of the full suite; each returns a JSON-able payload and, given an
``out_dir``, also writes it there as JSON with its figure (PNG). The benchmark runs them as run
kinds ``"curvature"`` and ``"momentum_tracing"`` (:mod:`geoptim.bench.runner`) and redraws the
figures from its records.

* :func:`curvature_experiment`: train a task and record Hessian spectra at chosen epochs
  (``curvature.json``, ``curvature.png``: eigenvalue density against epoch, as figure 1 of the
  LPSGD paper, and the anisotropy over training).
* :func:`momentum_tracing_experiment`: Lion and SepNorm on the digits ResNet with ReLU and with
  leaky ReLU, with the momentum-tracing, weight-quantile and update-cosine monitors
  (``momentum_tracing.json``, ``momentum_tracing.png``: figure 2 and appendix C of the SepNorm
  paper).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geoptim.analysis.curvature import CurvatureRecorder
from geoptim.analysis.monitors import MomentumTracing, UpdateCosine, WeightQuantile
from geoptim.analysis.plots import plot_curvature, plot_momentum_tracing

Progress = Callable[[str], None] | None

CLEAN_DIGITS: dict[str, Any] = {"model": "resnet", "n_train": None, "label_noise": 0.0}
"""The digits ResNet on the whole clean training split (the benchmark's default digits task is
made hard on purpose: few, partly mislabelled training images)."""

CURVATURE_HPARAMS: dict[str, dict[str, Any]] = {
    "sgdm": {"lr": 0.05, "weight_decay": 5e-4},
    "adamw": {"lr": 1e-3, "weight_decay": 0.05},
    "lion": {"lr": 1e-4, "weight_decay": 1.0},
    "sepnorm": {"lr": 1e-3, "weight_decay": 0.1},
    "lpsgdm": {"lr": 0.01, "weight_decay": 5e-4, "p_max": 6.0},
}

TRACING_RUNS: tuple[tuple[str, str], ...] = (
    ("lion", "relu"),
    ("lion", "leaky_relu"),
    ("sepnorm", "relu"),
    ("sepnorm", "leaky_relu"),
)


def _trainable(name: str, options: dict[str, Any]) -> Any:
    from geoptim.bench.tasks import TrainableTask, get_task

    task = get_task(name, **options)
    if not isinstance(task, TrainableTask):
        raise ValueError(f"task {name!r} has no model to take a Hessian of")
    return task


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=1, allow_nan=True))


def curvature_experiment(
    out_dir: str | Path | None,
    *,
    task: str = "digits",
    task_options: dict[str, Any] | None = None,
    optimizer: str = "sgdm",
    hparams: dict[str, Any] | None = None,
    epochs: int = 10,
    at: Sequence[int] = (0, 1, 2, 5, 10),
    seed: int = 0,
    hessian_samples: int = 256,
    k: int = 3,
    slq_probes: int = 2,
    slq_steps: int = 32,
    trace_samples: int = 30,
    mode: str = "train",
    progress: Progress = None,
) -> dict[str, Any]:
    """Train ``task`` with ``optimizer`` for ``epochs`` and record the Hessian spectra on its
    first ``hessian_samples`` training examples at every epoch in ``at`` (0: before training).

    ``task_options`` default to ``{"model": "resnet"}`` for ``digits``; ``hparams`` default to
    :data:`CURVATURE_HPARAMS` for the optimizer (cosine lr decay, the training loop's default).
    Returns (and writes as ``curvature.json``) the configuration, the records of
    :class:`CurvatureRecorder` and the training curves; plots ``curvature.png``.
    """
    options = dict(task_options or (CLEAN_DIGITS if task == "digits" else {}))
    params = dict(hparams or CURVATURE_HPARAMS.get(optimizer, {"lr": 1e-3}))
    trainable = _trainable(task, options)
    device = trainable.torch_device()
    x, y = trainable.make_data(seed).hessian_batch(hessian_samples)
    recorder = CurvatureRecorder(
        trainable.loss_fn,
        (x.to(device), y.to(device)),
        at,
        k=k,
        slq_probes=slq_probes,
        slq_steps=slq_steps,
        trace_samples=trace_samples,
        mode=mode,
        seed=seed,
        progress=progress,
    )
    if 0 in recorder.at:
        recorder.record(0, trainable.make_model(seed).to(device).train())
    result = trainable.run(optimizer, params, seed, {"epochs": epochs}, callbacks=[recorder])
    config = {
        "task": task,
        "task_options": options,
        "optimizer": optimizer,
        "hparams": params,
        "epochs": epochs,
        "at": sorted(recorder.at),
        "seed": seed,
        "hessian_samples": len(y),
        "k": k,
        "slq_probes": slq_probes,
        "slq_steps": slq_steps,
        "trace_samples": trace_samples,
        "mode": mode,
    }
    payload = {
        "config": config,
        "records": recorder.records,
        "training": {"curves": result["curves"], "final": result["final"]},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "curvature.json", payload)
        plot_curvature(recorder.records, out / "curvature.png", title=curvature_title(config))
    return payload


def curvature_title(config: dict[str, Any]) -> str:
    """The curvature figure's title, from a payload's ``config``."""
    label = ", ".join(f"{k}={v}" for k, v in config["task_options"].items())
    return f"{config['task']} ({label}), {config['optimizer']}: Hessian spectrum over training"


def tracing_summary(
    tracing: dict[str, list[Any]],
    quantile: dict[str, list[Any]],
    cosine: dict[str, list[Any]],
    last: int = 100,
) -> dict[str, float]:
    """Totals of a momentum-tracing run: counts summed over all steps, the final 95% quantile
    of ``|w|`` and the mean cosine of the ``last`` steps."""
    tail = cosine["cosine"][-last:]
    return {
        "bn_bias_total": int(sum(tracing["bn_bias"])),
        "other_total": int(sum(tracing["other"])),
        "bn_bias_dormant_final": int(tracing["bn_bias_dormant"][-1]),
        "quantile_final": float(quantile["quantile"][-1]),
        "cosine_tail_mean": float(sum(tail) / len(tail)) if tail else math.nan,
    }


def momentum_tracing_experiment(
    out_dir: str | Path | None,
    *,
    runs: Sequence[tuple[str, str]] = TRACING_RUNS,
    lr: float = 1e-2,
    weight_decay: float = 0.2,
    batch_size: int = 16,
    width: int = 16,
    epochs: int = 12,
    threshold: float = 1e-3,
    seed: int = 0,
    progress: Progress = None,
) -> dict[str, Any]:
    """Lion and SepNorm on the digits ResNet (ReLU and leaky ReLU), constant ``lr``, weight
    decay on the conv/linear weights (the loop's param groups leave BatchNorm and biases
    undecayed), small batches (momentum tracing needs whole-batch-dead ReLU channels).

    Each run carries :class:`MomentumTracing` (``threshold``), :class:`WeightQuantile` (95%)
    and :class:`UpdateCosine` (top 5%). Returns (and writes as ``momentum_tracing.json``) the
    configuration, every run's histories, summary (:func:`tracing_summary`) and final
    metrics; plots ``momentum_tracing.png``.
    """
    hparams = {"lr": lr, "weight_decay": weight_decay, "lr_schedule": "constant"}
    results: dict[str, Any] = {}
    for optimizer, activation in runs:
        label = f"{optimizer} / {activation}"
        task = _trainable(
            "digits",
            {**CLEAN_DIGITS, "activation": activation, "batch_size": batch_size, "width": width},
        )
        monitors = {
            "tracing": MomentumTracing(threshold=threshold),
            "quantile": WeightQuantile(),
            "cosine": UpdateCosine(),
        }
        result = task.run(
            optimizer, hparams, seed, {"epochs": epochs}, callbacks=list(monitors.values())
        )
        histories = {name: monitor.history for name, monitor in monitors.items()}
        summary = tracing_summary(**histories)
        results[label] = {**histories, "summary": summary, "final": result["final"]}
        if progress is not None:
            progress(
                f"{label:>22}: BN-bias tracing {summary['bn_bias_total']:>5}, other "
                f"{summary['other_total']:>7}, q95 |w| {summary['quantile_final']:.3f}, "
                f"test acc {result['final'].get('test_acc', math.nan):.3f}"
            )
    payload = {
        "config": {
            "runs": [list(r) for r in runs],
            "hparams": hparams,
            "batch_size": batch_size,
            "width": width,
            "epochs": epochs,
            "threshold": threshold,
            "seed": seed,
        },
        "runs": results,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "momentum_tracing.json", payload)
        plot_momentum_tracing(
            results, out / "momentum_tracing.png", title=tracing_title(payload["config"])
        )
    return payload


def tracing_title(config: dict[str, Any]) -> str:
    """The momentum-tracing figure's title, from a payload's ``config``."""
    hparams = config["hparams"]
    return (
        f"digits ResNet, batch {config['batch_size']}, lr {hparams['lr']}, "
        f"wd {hparams['weight_decay']}"
    )
