"""``geoptim report DIR``: rebuild the report from the records in DIR."""

from __future__ import annotations

import argparse

from geoptim.bench.cli_common import fail

HELP = "rebuild DIR/report.md (tables, plots, claims) from the records in DIR"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a directory `geoptim bench` wrote")


def run(args: argparse.Namespace) -> int:
    from geoptim.bench.report import build_report

    try:
        path = build_report(args.dir)
    except FileNotFoundError as err:
        return fail("report", str(err))
    print(f"report: {path}")
    return 0
