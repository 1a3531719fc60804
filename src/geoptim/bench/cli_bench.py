"""``geoptim bench``: run a suite (skipping recorded runs) and build its report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from geoptim.bench.cli_common import (
    ConfigError,
    check_optimizers,
    check_tasks,
    fail,
    make_task,
    parse_task,
    positive_int,
    split_names,
)

if TYPE_CHECKING:
    from geoptim.bench.records import RunSpec

HELP = "run the papers' experiments (a suite of runs) and write records and a report"
DEFAULT_OUT = "geoptim-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from geoptim.bench.suites import suite_names

    parser.add_argument("--suite", default="quick", choices=suite_names(),
                        help="quick: CPU-scale, under 10 min on 2 cores (default); standard: "
                             "under 60 min on 2 cores; full: the papers' protocol (GPU)")
    parser.add_argument("--tasks", nargs="+", metavar="TASK",
                        help="only these tasks; a task may carry options, e.g. "
                             "digits:model=vgg")
    parser.add_argument("--optimizers", nargs="+", metavar="OPT",
                        help="only these optimizers (comparisons run exactly these)")
    parser.add_argument("--seeds", type=positive_int, metavar="N",
                        help="seeds per setting (default: the suite's, 3 for quick)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"output directory for records and report (default {DEFAULT_OUT})")
    parser.add_argument("--presets", choices=("paper", "tuned"), default="tuned",
                        help="hyper-parameters: tuned on validation data (default: the shipped "
                             "ones, replaced by those `geoptim tune` wrote to DIR/presets; "
                             "paper where none was tuned) or the papers'")
    parser.add_argument("--preset-file", action="append", default=[], metavar="FILE",
                        help="use this tuned preset JSON (repeatable)")
    parser.add_argument("--workers", type=positive_int, metavar="N",
                        help="parallel worker processes, one torch thread each (default: one per "
                             "core)")
    parser.add_argument("--quiet", action="store_true", help="log lines instead of a bar")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan with its estimated time, list the runs and stop")
    parser.add_argument("--no-report", action="store_true", help="do not build the report")


def plan(args: argparse.Namespace) -> list[RunSpec]:
    """The run specs the arguments ask for; :class:`ConfigError` on any bad value."""
    from geoptim.bench.presets import PRESETS_SUBDIR, load_presets
    from geoptim.bench.suites import build_specs, select

    tasks = [parse_task(t) for t in split_names(args.tasks)] if args.tasks else None
    optimizers = split_names(args.optimizers) if args.optimizers else None
    if tasks is not None:
        check_tasks(tasks)
    if optimizers is not None:
        check_optimizers(optimizers)
    try:
        presets = load_presets(args.presets, Path(args.out) / PRESETS_SUBDIR, args.preset_file)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    experiments = select(args.suite, tasks, optimizers, args.seeds)
    if not experiments:
        raise ConfigError("no run left: the optimizers chosen appear in none of the suite's "
                          "experiments")
    check_optimizers({name for exp in experiments for name in exp.optimizers})
    return build_specs(experiments, presets, args.suite, make_task)


def run(args: argparse.Namespace) -> int:
    from geoptim.bench.report import build_report
    from geoptim.bench.runner import default_workers, describe, execute

    try:
        specs = plan(args)
    except ConfigError as err:
        return fail("bench", str(err))
    if args.dry_run:
        from geoptim.bench.suites import plan_text

        print(plan_text(specs, make_task, args.workers or default_workers()))
        for spec in specs:
            print(f"{spec.run_id}  {describe(spec)}  {spec.hparams}  {spec.budget}")
        print(f"{len(specs)} runs")
        return 0
    workers = args.workers or default_workers()
    start = time.perf_counter()
    summary = execute(specs, args.out, workers=workers, quiet=args.quiet)
    elapsed = time.perf_counter() - start
    print(f"{len(summary.ran) - len(summary.failed)} runs done, {summary.skipped} already "
          f"recorded, {len(summary.failed)} failed, in {elapsed:.0f}s ({workers} workers)")
    if not args.no_report:
        print(f"report: {build_report(args.out)}")
    return 1 if summary.failed else 0
