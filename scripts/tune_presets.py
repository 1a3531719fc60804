"""Re-tune the shipped presets (``src/geoptim/bench/tuned_presets.json``) the benchmark's way.

Every (task, optimizer) of the quick suite gets a small grid search with ``geoptim.bench.tune``:
selection on the validation split (the task's ``TUNING_METRIC``), tuning seeds 1000, 1001, ...
(never a benchmark seed), the quick budget, one torch thread. AGR variants and ``sgdm_rms`` use
their base optimizer's preset. Usage::

    PYTHONPATH=src python scripts/tune_presets.py OUT_DIR [TASK ...]   # run the searches
    PYTHONPATH=src python scripts/tune_presets.py OUT_DIR --ship       # write the JSON file

The grids below are the search spaces recorded in each preset's provenance (a grid whose best
point was at its edge was extended by one point, and the search re-run: its trials are cached).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from geoptim.bench import tune
from geoptim.bench.presets import PRESETS_SUBDIR, SHIPPED_FILE, load_preset_file
from geoptim.bench.records import write_json_atomic
from geoptim.bench.tasks import get_task

LR4 = {
    "sgdm": [0.003, 0.01, 0.03, 0.1, 0.3],
    "lpsgdm": [1e-3, 3e-3, 1e-2, 3e-2],
    "adamw": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "adan": [1e-3, 3e-3, 1e-2, 3e-2],
    "lion": [3e-4, 1e-3, 3e-3, 1e-2],
    "sepnorm": [3e-4, 1e-3, 3e-3, 1e-2],
}
PLAN: list[tuple[str, int, dict[str, dict[str, list[float]]]]] = [
    (
        "quadratic",
        1,
        {
            name: {"lr": lrs}
            for name, lrs in {
                "sgd": [0.5, 1.0, 1.5, 1.9],
                "signsgd": [0.01, 0.03, 0.1],
                "normsgd": [0.01, 0.03, 0.1],
                "lpsgd": [0.03, 0.1, 0.3],
            }.items()
        },
    ),
    ("digits", 2, {name: {"lr": lrs} for name, lrs in LR4.items()}),
    (
        "mnist1d",
        2,
        {
            name: {"lr": lrs}
            for name, lrs in {
                "sgdm": [0.03, 0.1, 0.3],
                "lpsgdm": [3e-3, 1e-2, 3e-2, 0.1],
                "adamw": [3e-3, 1e-2, 3e-2, 0.1],
                "lion": [1e-3, 3e-3, 1e-2, 3e-2],
                "sepnorm": [1e-3, 3e-3, 1e-2, 3e-2],
            }.items()
        },
    ),
    (
        "grokking",
        1,
        {
            "adamw": {"lr": [3e-3, 1e-2, 3e-2, 0.1], "weight_decay": [1.0, 2.0, 4.0]},
            "lion": {"lr": [3e-3, 1e-2, 3e-2, 0.1], "weight_decay": [1.0, 3.0, 6.0]},
            "sepnorm": {"lr": [3e-3, 1e-2, 3e-2, 0.1], "weight_decay": [1.0, 3.0, 6.0]},
            "ortsepnorm": {"lr": [3e-3, 1e-2, 3e-2, 0.1], "weight_decay": [0.1, 1.0]},
        },
    ),
]


def search(out: Path, only: list[str]) -> None:
    torch.set_num_threads(1)
    for task_name, seeds, spaces in PLAN:
        if only and task_name not in only:
            continue
        task = get_task(task_name)
        for optimizer, space in spaces.items():
            start = time.perf_counter()
            _, trials = tune.tune(
                task, task_name, {}, optimizer, 100, out, seeds=seeds, quiet=True, space=space
            )
            print(
                f"{task_name} {optimizer} ({time.perf_counter() - start:.0f} s): "
                + "; ".join(f"{t.setting} {t.score:.4f}" for t in trials),
                flush=True,
            )


def ship(out: Path) -> None:
    presets = [load_preset_file(path) for path in sorted((out / PRESETS_SUBDIR).glob("*.json"))]
    write_json_atomic(SHIPPED_FILE, {"presets": presets})
    print(f"{len(presets)} presets -> {SHIPPED_FILE}")


if __name__ == "__main__":
    out_dir, *rest = sys.argv[1:]
    if rest == ["--ship"]:
        ship(Path(out_dir))
    else:
        search(Path(out_dir), rest)
