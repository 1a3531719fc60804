"""``geoptim tune``: search lr / weight decay (/ p_max) and write the best as a tuned preset."""

from __future__ import annotations

import argparse

from geoptim.cli.bench import DEFAULT_OUT
from geoptim.cli.common import (
    ConfigError,
    add_executor_arguments,
    check_optimizers,
    make_task,
    positive_int,
    task_data,
    task_variant,
    writable_dir,
)

HELP = "grid/random search over lr and weight decay (and p_max), best setting saved as a preset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geoptim.bench.suites import suite_names

    parser.add_argument(
        "--task",
        required=True,
        metavar="TASK",
        help="the task, optionally with options (digits:model=vgg)",
    )
    parser.add_argument("--optimizer", required=True, metavar="OPT")
    parser.add_argument(
        "--budget",
        type=positive_int,
        default=12,
        metavar="N",
        help="number of settings to try (default 12; the paper preset is one)",
    )
    parser.add_argument(
        "--seeds", type=positive_int, default=1, metavar="N", help="seeds per setting (default 1)"
    )
    parser.add_argument(
        "--suite",
        default="quick",
        choices=suite_names(),
        help="whose run budget each trial gets (default quick)",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"writes DIR/presets/<task>__<opt>.json (default {DEFAULT_OUT}); "
        "`geoptim bench --presets tuned --out DIR` uses it",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="parallel worker processes (default: one per core)",
    )
    add_executor_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="log lines instead of a bar")


def run(args: argparse.Namespace) -> int:
    from geoptim.bench.executors import ExecutorError
    from geoptim.bench.presets import PRESETS_SUBDIR, MissingPreset, paper_preset
    from geoptim.bench.records import records_dir
    from geoptim.bench.runner import DirectoryBusy, default_workers
    from geoptim.bench.tune import TUNE_SUBDIR, tune
    from geoptim.cli.common import make_executor

    name, overrides = task_variant(args.task)
    check_optimizers([args.optimizer])
    task = make_task(name, overrides)
    try:
        paper_preset(name, args.optimizer, overrides)  # the grid is centred on it
    except MissingPreset as err:
        raise ConfigError(str(err)) from None
    if hasattr(task, "make_data"):
        task_data(task, 0)  # missing data (CIFAR) would fail every trial
    out = writable_dir(args.out)
    writable_dir(out / PRESETS_SUBDIR, what="the presets directory")
    writable_dir(records_dir(out / TUNE_SUBDIR), what="the trials' records directory")
    try:
        executor = make_executor(args, args.workers or default_workers(args.cpus_per_run))
        path, trials = tune(
            task,
            name,
            overrides,
            args.optimizer,
            args.budget,
            args.out,
            seeds=args.seeds,
            suite=args.suite,
            quiet=args.quiet,
            executor=executor,
        )
    except (ExecutorError, DirectoryBusy) as err:
        raise ConfigError(str(err)) from None
    executor.close()
    for trial in trials:
        print(f"score {trial.score:.4f}  {trial.setting}")
    print(f"best: {trials[0].setting} -> {path}")
    return 0
