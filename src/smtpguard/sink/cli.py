"""``smtpguard sink``: run the built-in Maildir mailbox on its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
from typing import Any

from smtpguard.errors import CliError
from smtpguard.logs import ImsLog, open_protocol_log
from smtpguard.netaddr import parse_hostport
from smtpguard.sink.lab import DEFAULT_DATA_TIMEOUT, EMULATIONS


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
    p.add_argument(
        "--log",
        metavar="FILE",
        help="append a protocol log in the Exchange IMS layout (what 'smtpguard logscan' "
        "reads): connections, commands, replies, and what ended each session",
    )
    p.add_argument(
        "--emulate",
        choices=EMULATIONS,
        help="LAB ONLY: 'ims' behaves like Exchange 5.5's Internet Mail Service: when a "
        "session times out or is dropped inside DATA, the data received so far is "
        "delivered as a message (the duplicates of the PIX CSCds90792 story)",
    )
    p.add_argument(
        "--data-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="with --emulate ims: how long DATA may go without a byte before the session "
        f"is ended and the partial message delivered (default {DEFAULT_DATA_TIMEOUT:g})",
    )
    p.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    host, port = parse_hostport(args.listen, "--listen")
    if args.data_timeout is not None and args.emulate != "ims":
        raise CliError("--data-timeout needs --emulate ims")
    protocol_log = None
    if args.log:
        try:
            protocol_log = open_protocol_log(args.log, "ims")
        except OSError as exc:
            raise CliError(f"cannot open --log {args.log}: {exc.strerror or exc}") from None
    assert protocol_log is None or isinstance(protocol_log, ImsLog)
    timeout = args.data_timeout or DEFAULT_DATA_TIMEOUT
    try:
        return asyncio.run(_main(host, port, args.maildir, protocol_log, args.emulate, timeout))
    finally:
        if protocol_log is not None:
            protocol_log.flush()


async def _main(
    host: str,
    port: int,
    maildir: str,
    protocol_log: ImsLog | None,
    emulate: str | None,
    data_timeout: float,
) -> int:
    # Imported when the sink runs: it loads aiosmtpd, which no other command needs.
    from smtpguard.sink import start_sink

    try:
        server, bound, _ = await start_sink(
            host,
            port,
            maildir,
            protocol_log=protocol_log,
            emulate=emulate,
            data_timeout=data_timeout,
        )
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if emulate == "ims":
        print(
            f"smtpguard sink: LAB EMULATION of Exchange 5.5 IMS: a session that goes "
            f"{data_timeout:g} s without a byte in DATA, or is dropped in DATA, has its "
            f"partial message DELIVERED",
            flush=True,
        )
    logged = f", protocol log {protocol_log.path}" if protocol_log is not None else ""
    print(
        f"smtpguard sink: listening on {host}:{bound}, mail lands in {maildir} (Maildir){logged}",
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
