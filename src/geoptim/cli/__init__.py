"""The ``geoptim`` command line: one sub-command per module.

Each sub-command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; ``run`` checks every argument before any work and raises
:class:`~geoptim.cli.common.ConfigError` for a bad one. User errors (bad arguments, a full
disk) are printed as one line ``geoptim: error: ...``; any other exception keeps its traceback.
A sub-command whose extra is not installed stays listed and, when run, says which extra to
install.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import NoReturn

import geoptim
from geoptim.cli.common import ConfigError

COMMANDS: dict[str, str] = {
    "bench": "geoptim.cli.bench",
    "report": "geoptim.cli.report",
    "tune": "geoptim.cli.tune",
    "curvature": "geoptim.cli.curvature",
    "speed": "geoptim.cli.speed",
    "train": "geoptim.cli.train",
}
# The extra that provides each command's libraries (``pip install "geoptim[EXTRA]"``). The
# curvature, speed and train commands run benchmark tasks or time the benchmark's peers.
EXTRAS: dict[str, str] = {command: "bench" for command in COMMANDS}


def _is_third_party(err: ModuleNotFoundError) -> bool:
    return (err.name or "geoptim").split(".")[0] != "geoptim"


def _missing_extra(command: str, err: ModuleNotFoundError) -> int:
    """One line naming the extra that provides ``command``'s missing library; exit status 2."""
    extra = EXTRAS[command]
    print(
        f"geoptim: error: 'geoptim {command}' needs the {extra!r} extra ({err.name} is not "
        f'installed): pip install "geoptim[{extra}]"',
        file=sys.stderr,
    )
    return 2


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
    parser.add_argument("--version", action="version", version=f"geoptim {geoptim.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if not _is_third_party(err):
                raise
            cmd = sub.add_parser(name, help=f"(needs geoptim[{EXTRAS[name]}])", add_help=False)
            cmd.add_argument("args", nargs=argparse.REMAINDER)
            cmd.set_defaults(_run=lambda args, err=err: _missing_extra(args.command, err))
            continue
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:  # bare `geoptim`: the overview, not a usage error
            parser.print_help()
            return 0
        return int(args._run(args) or 0)
    except ConfigError as err:
        return _error(str(err), USAGE_ERROR)
    except ModuleNotFoundError as err:  # a library the command imports when it needs it
        if not _is_third_party(err):
            raise
        return _missing_extra(args.command, err)
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
