"""``smtpguard check-config FILE``: what ``serve --config FILE`` would say before it
listens, without starting anything.

The file is loaded as ``serve`` loads it, then ``serve``'s own start-up checks run
(:func:`~smtpguard.gateway.startup.problems`: files and directories writable,
certificate and key loadable and matching, addresses well-formed). Every problem is
one line on stderr, all of them, exit 2; else the effective settings, every key of
every table, are printed (``--json`` for programs), exit 0. Nothing is created.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from smtpguard.config.load import load
from smtpguard.config.render import to_data, to_text
from smtpguard.errors import CliError, ConfigError
from smtpguard.gateway.startup import problems

# What "valid" cannot promise: only the running host can tell.
NOT_CHECKED = (
    "not checked here: the listen addresses being free and the upstream answering "
    "(serve checks them when it starts)"
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check-config",
        help="validate a config file as serve would and print the effective settings",
        description="Validate a smtpguard TOML config file and run serve's start-up "
        "checks on it (files and directories writable, certificate and key loadable "
        "and matching, addresses well-formed). Exit 0 and print every effective "
        "setting (built-in defaults filled in) when serve would start with it; exit 2 "
        "with one line per problem, each naming the file, line and key, when not.",
    )
    p.add_argument("file", metavar="FILE", help="the TOML config file")
    p.add_argument("--json", action="store_true", help="print the effective settings as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load(args.file)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    found = problems(settings)
    if found:
        raise CliError("\n".join(found))
    if args.json:
        print(json.dumps(to_data(settings), indent=2))
    else:
        print(to_text(settings))
        print(f"\n{NOT_CHECKED}")
    return 0
