"""Command-line entry point: argument parsing only, each sub-command lives in its package.

Every package exposes ``register(subparsers)``, which adds its sub-parser and sets
``func`` to a callable taking the parsed namespace and returning the exit code.
Usage errors exit 2 with the usage of the command at fault, never a traceback; a
:class:`CliError` prints one ``smtpguard COMMAND: error: ...`` line per problem.

The man page and shell completions are generated from :func:`build_parser`
(``argparse-manpage`` and ``shtab``; see the README).

This module is the composition root of the command line: it imports every command's
module and nothing in the package imports it (``CliError`` lives in
:mod:`smtpguard.errors`; it is re-exported here for callers that know it by this name).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from smtpguard import __version__, core_build
from smtpguard.errors import CliError
from smtpguard.gateway import checkconfig
from smtpguard.gateway import cli as gateway_cli
from smtpguard.logscan import cli as logscan_cli
from smtpguard.probe import cli as probe_cli
from smtpguard.sink import cli as sink_cli

__all__ = ["CliError", "build_parser", "main", "subparser"]


class Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped option, command or choice
    (what Python 3.12's ``suggest_on_error`` does, which 3.11 lacks). Sub-command
    parsers are made of this class too (``add_subparsers`` uses the parent's)."""

    def error(self, message: str) -> NoReturn:
        super().error(message + suggestion(self, message))


def suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """`` (did you mean X?)`` for the first unknown word of an argparse error
    that is close to a real one, else nothing."""
    if message.startswith("unrecognized arguments: "):
        options = [o for a in parser._actions for o in a.option_strings]
        for word in message.removeprefix("unrecognized arguments: ").split():
            if word.startswith("-"):
                close = difflib.get_close_matches(word.split("=")[0], options, n=1)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""
    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if m:
        choices = re.findall(r"'([^']*)'", m[2])
        close = difflib.get_close_matches(m[1], choices, n=1)
        if close:
            return f" (did you mean {close[0]}?)"
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="smtpguard",
        description="SMTP inspection gateway and diagnostic toolkit.",
    )
    parser.add_argument(
        "--version", action="version", version=f"smtpguard {__version__} (core: {core_build()})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    gateway_cli.register(sub)
    checkconfig.register(sub)
    sink_cli.register(sub)
    probe_cli.register(sub)
    logscan_cli.register(sub)
    return parser


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-command's own parser (for its usage line in an error)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser | None = action.choices.get(command)
            if found is not None:
                return found
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args: an unknown option is reported by the sub-command's parser,
    # with its usage ("smtpguard serve --bogus" shows serve's options, not the list
    # of commands).
    args, extra = parser.parse_known_args(argv)
    if extra:
        subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.func(args)
    except CliError as exc:
        for line in str(exc).splitlines() or [""]:
            print(f"smtpguard {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # "smtpguard check-config FILE | head": the reader left; no traceback, and
        # none at exit either when Python flushes stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
