"""The ``geoptim`` command line: one sub-command per module.

Each sub-command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. A sub-command whose extra is not installed stays listed and, when run,
says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import geoptim

COMMANDS: dict[str, str] = {
    "bench": "geoptim.bench.cli_bench",
    "report": "geoptim.bench.cli_report",
    "tune": "geoptim.bench.cli_tune",
    "curvature": "geoptim.analysis.cli",
    "speed": "geoptim.speed",
    "train": "geoptim.distributed.train",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `geoptim`: the overview, not a usage error
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except ModuleNotFoundError as err:  # a library the command imports when it needs it
        if not _is_third_party(err):
            raise
        return _missing_extra(args.command, err)


if __name__ == "__main__":
    sys.exit(main())
