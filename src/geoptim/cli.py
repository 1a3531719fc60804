"""The ``geoptim`` command line: one sub-command per module.

Each sub-command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; ``run`` checks every argument before any work and raises
:class:`~geoptim.bench.cli_common.ConfigError` for a bad one. User errors (bad arguments, a full
disk) are printed as one line ``geoptim: error: ...``; any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import NoReturn

from geoptim.bench.cli_common import ConfigError

COMMANDS: dict[str, str] = {
    "bench": "geoptim.bench.cli_bench",
    "report": "geoptim.bench.cli_report",
    "tune": "geoptim.bench.cli_tune",
    "curvature": "geoptim.analysis.cli",
    "speed": "geoptim.speed",
    "train": "geoptim.distributed.train",
}

USAGE_ERROR = 2
"""Exit status of a user error (as argparse)."""
DISK_FULL = 1
"""Exit status when a write ran out of space (finished records are kept)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are :class:`ConfigError` (one line, see :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    try:
        args = build_parser().parse_args(argv)
        return int(args._run(args) or 0)
    except ConfigError as err:
        return _error(str(err), USAGE_ERROR)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {err.filename}" if err.filename else ""
        return _error(f"no space left on the device{where}", DISK_FULL)


def _error(message: str, status: int) -> int:
    one_line = message.replace("\n", " ")
    print(f"geoptim: error: {one_line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
