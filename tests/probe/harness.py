"""Drive `smtpguard probe` through its CLI entry, as `smtpguard.cli.main` would."""

from __future__ import annotations

import argparse
import sys

from smtpguard.cli import CliError
from smtpguard.probe import cli as probe_cli


def run_probe_cli(argv: list[str]) -> int:
    """Parse and run like the top-level CLI: CliError -> one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog="smtpguard")
    sub = parser.add_subparsers(dest="command", required=True)
    probe_cli.register(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"smtpguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code


FAST = ["--gap", "0.2", "--smuggle-wait", "0.3"]
