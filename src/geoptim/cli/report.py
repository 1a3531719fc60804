"""``geoptim report DIR``: rebuild the report from the records in DIR."""

from __future__ import annotations

import argparse
from pathlib import Path

from geoptim.cli.common import ConfigError, writable_dir

HELP = "rebuild DIR/report.md (tables, plots, claims) from the records in DIR"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a directory `geoptim bench` wrote")
    parser.add_argument(
        "--suite",
        metavar="NAME",
        help="the suite to report (default: the one DIR was last run with)",
    )
    parser.add_argument(
        "--accept-other-versions",
        action="store_true",
        help="also report records written by other geoptim versions",
    )


def run(args: argparse.Namespace) -> int:
    from geoptim.bench.records import SelectionError
    from geoptim.bench.report import build_report

    if not Path(args.dir).is_dir():
        raise ConfigError(f"{args.dir!r} is not a directory")
    writable_dir(args.dir, what="DIR")
    try:
        path = build_report(
            args.dir, suite=args.suite, accept_other_versions=args.accept_other_versions
        )
    except (FileNotFoundError, SelectionError) as err:
        raise ConfigError(str(err)) from None
    print(f"report: {path}")
    return 0
