"""``smtpguard sink``: run the built-in Maildir mailbox on its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from smtpguard.netaddr import parse_hostport


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "sink",
        help="run the built-in mailbox (SMTP server storing mail in a Maildir)",
        description="Run the built-in mailbox on its own: an SMTP server (aiosmtpd) that "
        "accepts every message and files it into a Maildir, with Return-Path and "
        "X-Original-To headers for the envelope. It is what 'smtpguard serve' relays to "
        "when no --upstream is given; alone, it is a test target for the gateway or any "
        "client. Stop it with Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:2526",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:2526)",
    )
    p.add_argument(
        "--maildir",
        default="./smtpguard-mail",
        metavar="DIR",
        help="Maildir where messages land (default ./smtpguard-mail)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host, port = parse_hostport(args.listen, "--listen")
    return asyncio.run(_main(host, port, args.maildir))


async def _main(host: str, port: int, maildir: str) -> int:
    from smtpguard.cli import CliError
    from smtpguard.sink import start_sink

    try:
        server, bound, _ = await start_sink(host, port, maildir)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    print(
        f"smtpguard sink: listening on {host}:{bound}, mail lands in {maildir} (Maildir)",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    return 0
