from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "logs"


def run_logscan(*argv: str) -> tuple[int, str]:
    """Parse like the top-level CLI does and run; returns (exit code, stdout)."""
    import contextlib
    import io

    from smtpguard.cli import CliError
    from smtpguard.logscan import cli

    parser = argparse.ArgumentParser(prog="smtpguard")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["logscan", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = args.func(args)
        except CliError:
            code = 2
    return code, out.getvalue()


def scan_json(*argv: str) -> tuple[int, dict]:
    code, out = run_logscan("--json", *argv)
    return code, json.loads(out)


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
