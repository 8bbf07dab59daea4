"""Command-line entry point: argument parsing only, each sub-command lives in its package.

Every package exposes ``register(subparsers)``, which adds its sub-parser and sets
``func`` to a callable taking the parsed namespace and returning the exit code.
Usage errors exit 2 with one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smtpguard import __version__, core_build


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from smtpguard.config import cli as config_cli
    from smtpguard.gateway import cli as gateway_cli
    from smtpguard.logscan import cli as logscan_cli
    from smtpguard.probe import cli as probe_cli
    from smtpguard.sink import cli as sink_cli

    parser = argparse.ArgumentParser(
        prog="smtpguard",
        description="SMTP inspection gateway and diagnostic toolkit.",
    )
    parser.add_argument(
        "--version", action="version", version=f"smtpguard {__version__} (core: {core_build()})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    gateway_cli.register(sub)
    config_cli.register(sub)
    sink_cli.register(sub)
    probe_cli.register(sub)
    logscan_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"smtpguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
