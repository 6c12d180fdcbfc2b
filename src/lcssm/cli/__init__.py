"""The ``lcssm`` command. Each subcommand lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys
import typing
import warnings
from collections.abc import Mapping, Sequence

from lcssm.errors import LcssmError

# subcommand modules, in the order they appear in --help
_MODULES = ("runs", "export", "reproduce", "bench", "importer")

#: exceptions that mean "bad input": one line on stderr, exit code 2
USER_ERRORS = (LcssmError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit code 2), not a usage block."""

    #: the subcommands' parsers by name (set by :func:`build_parser` on the top-level parser)
    commands: Mapping[str, argparse.ArgumentParser]

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None/False or the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False or action.default in (
                argparse.SUPPRESS, []):
            return text
        return super()._get_help_string(action) or ""


def build_parser() -> Parser:
    """The ``lcssm`` parser with every subcommand module's parser registered (``parser.commands``)."""
    parser = Parser(
        prog="lcssm",
        description="Score matching and score-based diffusion models with LCSS.",
    )
    from lcssm import __version__

    parser.add_argument("--version", action="version", version=f"lcssm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _MODULES:
        try:
            module = importlib.import_module(f"lcssm.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"lcssm.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    parser.commands = sub.choices
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    warnings.formatwarning = lambda message, *a, **k: f"lcssm {args.command}: warning: {message}\n"  # one line
    if extra:  # reported by the subcommand's parser, so the message names it
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        code = int(getattr(e, "exit_code", 2))
        what = "" if code in (130, 143) else "error: "  # a signal's stop is no error: the run is resumable
        print(f"lcssm {args.command}: {what}{e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"lcssm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
