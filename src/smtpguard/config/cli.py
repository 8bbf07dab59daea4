"""``smtpguard check-config FILE``: validate a config file, print the effective policy."""

from __future__ import annotations

import argparse
import json
from typing import Any

from smtpguard.errors import CliError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check-config",
        help="validate a config file and print the effective policy",
        description="Validate a smtpguard TOML config file. Exit 0 and print the "
        "effective settings (built-in defaults filled in) when valid; exit 2 with one "
        "line naming the file, line, key and expected value when not.",
    )
    p.add_argument("file", metavar="FILE", help="the TOML config file")
    p.add_argument("--json", action="store_true", help="print the effective settings as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from smtpguard.config.load import load
    from smtpguard.config.render import to_data, to_text
    from smtpguard.errors import ConfigError

    try:
        settings = load(args.file)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(to_data(settings), indent=2))
    else:
        print(to_text(settings))
    return 0
