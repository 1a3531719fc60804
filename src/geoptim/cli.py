"""The ``geoptim`` command line: one sub-command per module.

Each sub-command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "bench": "geoptim.bench.cli_bench",
    "report": "geoptim.bench.cli_report",
    "tune": "geoptim.bench.cli_tune",
    "curvature": "geoptim.analysis.cli",
    "speed": "geoptim.speed",
    "train": "geoptim.distributed.train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geoptim", description="Geometry-aware optimizers: benchmark and analysis tools."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
