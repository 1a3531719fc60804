"""``geoptim bench``: run a suite (skipping recorded runs) and build its report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from geoptim.cli.common import (
    ConfigError,
    add_executor_arguments,
    check_hparams,
    check_optimizers,
    make_task,
    non_negative_float,
    positive_int,
    split_names,
    split_tasks,
    task_variant,
    writable_dir,
)

if TYPE_CHECKING:
    from geoptim.bench.records import RunSpec

HELP = "run the papers' experiments (a suite of runs) and write records and a report"
DEFAULT_OUT = "geoptim-bench"
STAND_IN_SUBDIR = "stand-in"
"""Where the smoke suite writes its stand-in data, under ``--out``."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geoptim.bench.checkpoints import DEFAULT_INTERVAL_S
    from geoptim.bench.suites import suite_names

    parser.add_argument(
        "--suite",
        default="quick",
        choices=suite_names(),
        help="quick: CPU-scale, under 10 min on 2 cores (default); standard: under 60 min on 2 "
        "cores; full: the papers' protocol (GPU); smoke: every task, model and optimizer of "
        "every suite for 3 steps on the CPU, on stand-in data for folder datasets (minutes)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help="only these tasks; a task may carry options, e.g. digits:model=vgg",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        metavar="OPT",
        help="only these optimizers (comparisons run exactly these)",
    )
    parser.add_argument(
        "--seeds",
        type=positive_int,
        metavar="N",
        help="seeds per setting (default: the suite's, 3 for quick)",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output directory for records and report (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--presets",
        choices=("paper", "tuned"),
        default="tuned",
        help="hyper-parameters: tuned on validation data (default: the shipped ones, replaced "
        "by those `geoptim tune` wrote to DIR/presets; paper where none was tuned) or the papers'",
    )
    parser.add_argument(
        "--preset-file",
        action="append",
        default=[],
        metavar="FILE",
        help="use this tuned preset JSON (repeatable)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="parallel worker processes, --cpus-per-run torch threads each (default: one per core)",
    )
    add_executor_arguments(parser)
    parser.add_argument(
        "--wait",
        action="store_true",
        help="if another geoptim bench is using --out, wait for it (default: stop)",
    )
    parser.add_argument(
        "--accept-other-versions",
        action="store_true",
        help="count records of other geoptim versions as done and report them",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=non_negative_float,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help="a run saves a mid-run checkpoint at the end of an epoch once S seconds have passed "
        f"since its last one (default {DEFAULT_INTERVAL_S:g}; 0: every epoch); a killed run "
        "resumes from it",
    )
    parser.add_argument(
        "--checkpoint-steps",
        type=positive_int,
        metavar="N",
        help="also save a checkpoint every N optimizer steps (within an epoch), S apart",
    )
    parser.add_argument(
        "--no-checkpoints", action="store_true", help="never save mid-run checkpoints"
    )
    parser.add_argument("--quiet", action="store_true", help="log lines instead of a bar")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan with its estimated time, list the runs and stop",
    )
    parser.add_argument("--no-report", action="store_true", help="do not build the report")


def plan(args: argparse.Namespace) -> tuple[list[RunSpec], dict[str, str]]:
    """The run specs the arguments ask for and the paper table of each (by run id);
    :class:`ConfigError` on any bad value (the output directory included: created and
    test-written unless ``--dry-run``)."""
    from geoptim.bench.presets import PRESETS_SUBDIR, MissingPreset, load_presets
    from geoptim.bench.records import canonical_json, records_dir
    from geoptim.bench.suites import SMOKE, build_specs, for_smoke_run, select, tables_of

    tasks = [task_variant(t) for t in split_tasks(args.tasks)] if args.tasks else None
    optimizers = split_names(args.optimizers) if args.optimizers else None
    if optimizers is not None:
        if not optimizers:
            raise ConfigError("--optimizers names no optimizer")
        check_optimizers(optimizers)
    try:
        presets = load_presets(args.presets, Path(args.out) / PRESETS_SUBDIR, args.preset_file)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    experiments = select(args.suite, tasks, optimizers, args.seeds)
    if args.suite == SMOKE:
        experiments = for_smoke_run(experiments, Path(args.out) / STAND_IN_SUBDIR)
    if not experiments:
        raise ConfigError(
            "no run left: the optimizers chosen appear in none of the suite's experiments"
        )
    check_optimizers({name for exp in experiments for name in exp.optimizers})
    try:
        specs = build_specs(experiments, presets, args.suite, make_task)
    except MissingPreset as err:
        raise ConfigError(str(err)) from None
    writable_dir(args.out, create=False)  # a file in the way is found before the slower checks
    settings = {(s.optimizer, canonical_json(s.hparams)): s for s in specs}
    for spec in settings.values():
        check_hparams(spec.optimizer, spec.hparams)
    if not args.dry_run:
        writable_dir(args.out)
        writable_dir(records_dir(args.out), what="the records directory")
    tables = tables_of(experiments, presets, args.suite, make_task) if args.dry_run else {}
    return specs, tables


def run(args: argparse.Namespace) -> int:
    from geoptim.bench.checkpoints import CheckpointPolicy
    from geoptim.bench.executors import ExecutorError
    from geoptim.bench.records import SelectionError
    from geoptim.bench.report import build_report
    from geoptim.bench.runner import DirectoryBusy, default_workers, describe, execute
    from geoptim.cli.common import make_executor

    specs, tables = plan(args)
    if args.dry_run:
        from geoptim.bench.suites import FULL, plan_text, table_plan_text

        if args.suite == FULL:
            writable_dir(args.out)  # the measured throughput is cached there
            print(table_plan_text(specs, tables, make_task, args.out))
        else:
            print(plan_text(specs, make_task, args.workers or default_workers()))
        for spec in specs:
            print(f"{spec.run_id}  {describe(spec)}  {spec.hparams}  {spec.budget}")
        print(f"{len(specs)} runs")
        return 0
    workers = args.workers or default_workers(args.cpus_per_run)
    checkpoints = None
    if not args.no_checkpoints:
        checkpoints = CheckpointPolicy(args.checkpoint_interval, args.checkpoint_steps)
    start = time.perf_counter()
    try:
        executor = make_executor(args, min(workers, len(specs)))
        summary = execute(
            specs,
            args.out,
            quiet=args.quiet,
            executor=executor,
            wait=args.wait,
            accept_other_versions=args.accept_other_versions,
            checkpoints=checkpoints,
        )
    except (ExecutorError, DirectoryBusy) as err:
        raise ConfigError(str(err)) from None
    executor.close()
    elapsed = time.perf_counter() - start
    print(
        f"{len(summary.ran) - len(summary.failed)} runs done, {summary.skipped} already "
        f"recorded, {len(summary.failed)} failed, in {elapsed:.0f}s ({executor.slots} "
        f"{'workers' if args.executor == 'local' else 'Ray slots'})"
    )
    if not args.no_report:
        try:
            report = build_report(
                args.out, suite=args.suite, accept_other_versions=args.accept_other_versions
            )
        except SelectionError as err:
            raise ConfigError(str(err)) from None
        print(f"report: {report}")
    return 1 if summary.failed else 0
