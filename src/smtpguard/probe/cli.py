"""`smtpguard probe HOST[:PORT]`: argument parsing and exit codes only.

Exit 0 when every check is fine, 1 when a problem was found, 2 when the target could
not be reached or the arguments are wrong (a :class:`smtpguard.errors.CliError`).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import Any

from smtpguard.errors import CliError
from smtpguard.netaddr import split_hostport
from smtpguard.probe.mailbox import Mailbox, MailboxError
from smtpguard.probe.model import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_GAP,
    DEFAULT_PORT,
    DEFAULT_SMUGGLE_WAIT,
    DEFAULT_TIMEOUT,
    IMPLICIT_TLS_PORT,
    ProbeOptions,
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "probe",
        help="diagnose an SMTP path: Mailguard-style filter, split end-of-data, smuggling",
        description=(
            "Connect to an SMTP server like a sender would and report whether a "
            "Mailguard-style filter is in the path, whether a split CRLF.CRLF is "
            "answered, which bogus end-of-data sequences smuggle a second message "
            "through (checked in the mailbox with --maildir/--mbox), and whether "
            "PIPELINING, STARTTLS and AUTH work. Without --no-send it delivers a few "
            "small test messages to --to."
        ),
    )
    p.add_argument(
        "target", metavar="HOST[:PORT]", help="server to probe (port 25 default; IPv6 as [::1]:25)"
    )
    p.add_argument(
        "--from",
        dest="mail_from",
        default="",
        metavar="ADDR",
        help="envelope sender of test messages (default: null sender <>)",
    )
    p.add_argument(
        "--to",
        dest="rcpt_to",
        default="postmaster",
        metavar="ADDR",
        help="recipient of test messages (default: postmaster)",
    )
    p.add_argument(
        "--helo",
        dest="helo_name",
        default=None,
        metavar="NAME",
        help="name to send in EHLO/HELO (default: this host's FQDN)",
    )
    p.add_argument(
        "--no-send", action="store_true", help="never deliver anything: stop before DATA, use RSET"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for each reply (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--gap",
        type=float,
        default=DEFAULT_GAP,
        metavar="S",
        help=f"seconds between the split end-of-data segments (default {DEFAULT_GAP:g})",
    )
    p.add_argument(
        "--smuggle-wait",
        type=float,
        default=DEFAULT_SMUGGLE_WAIT,
        metavar="S",
        help="seconds to wait for an answer to a bogus end-of-data "
        f"(default {DEFAULT_SMUGGLE_WAIT:g})",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="use STARTTLS in every session (the certificate is not verified)",
    )
    p.add_argument(
        "--implicit-tls",
        action="store_true",
        help=f"TLS from the first byte (default on port {IMPLICIT_TLS_PORT}, which is "
        "then also the default port)",
    )
    p.add_argument("--auth-user", metavar="USER", help="authenticate (AUTH PLAIN/LOGIN, TLS only)")
    p.add_argument("--auth-pass", metavar="PASSWORD", help="password for --auth-user")
    box = p.add_mutually_exclusive_group()
    box.add_argument(
        "--maildir",
        metavar="DIR",
        help="Maildir (or directory of message files) that mail for --to lands in: "
        "smuggled messages are looked for there",
    )
    box.add_argument("--mbox", metavar="FILE", help="like --maildir, for an mbox file")
    p.add_argument(
        "--delivery-timeout",
        type=float,
        default=DEFAULT_DELIVERY_TIMEOUT,
        metavar="S",
        help="seconds to wait for acknowledged messages to reach --maildir/--mbox "
        f"(default {DEFAULT_DELIVERY_TIMEOUT:g})",
    )
    p.set_defaults(func=run)


def parse_target(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    try:
        host, port = split_hostport(text, default_port=default_port)
    except ValueError as exc:
        raise CliError(f"bad target {text!r}: {exc}") from None
    if port == 0:
        raise CliError(f"bad port 0 in {text!r}")
    return host, port


def options_from_args(args: argparse.Namespace) -> ProbeOptions:
    host, port = parse_target(args.target, IMPLICIT_TLS_PORT if args.implicit_tls else DEFAULT_PORT)
    implicit = args.implicit_tls or port == IMPLICIT_TLS_PORT
    if implicit and args.tls:
        raise CliError(
            "--tls (STARTTLS) and implicit TLS (--implicit-tls, port 465) exclude each other"
        )
    if (args.auth_user is None) != (args.auth_pass is None):
        raise CliError("--auth-user and --auth-pass go together")
    if args.auth_user is not None and not (implicit or args.tls):
        raise CliError(
            "--auth-user needs TLS: add --tls (STARTTLS) or --implicit-tls; "
            "credentials are never sent in clear"
        )
    mailbox = None
    if args.maildir or args.mbox:
        kind, path = ("maildir", args.maildir) if args.maildir else ("mbox", args.mbox)
        if args.no_send:
            raise CliError(f"--{kind} has nothing to check with --no-send")
        try:
            Mailbox(path, kind).check()
        except MailboxError as exc:
            raise CliError(str(exc)) from None
        mailbox = (kind, path)
    for name in ("timeout", "gap", "smuggle_wait", "delivery_timeout"):
        if not getattr(args, name) > 0:
            raise CliError(f"--{name.replace('_', '-')} must be a positive number of seconds")
    for flag, addr in (("--from", args.mail_from), ("--to", args.rcpt_to)):
        if any(ch in addr for ch in "<>\r\n\0 "):
            raise CliError(f"{flag} takes a bare address without <>, spaces or line breaks")
    if not args.rcpt_to:
        raise CliError("--to must not be empty")
    return ProbeOptions(
        host=host,
        port=port,
        mail_from=args.mail_from,
        rcpt_to=args.rcpt_to,
        helo_name=args.helo_name or socket.getfqdn() or "localhost",
        send=not args.no_send,
        tls=args.tls,
        timeout=args.timeout,
        gap=args.gap,
        smuggle_wait=args.smuggle_wait,
        implicit_tls=implicit,
        auth_user=args.auth_user,
        auth_pass=args.auth_pass,
        mailbox=mailbox,
        delivery_timeout=args.delivery_timeout,
    )


def run(args: argparse.Namespace) -> int:
    """With --json, stdout always gets one JSON object, an error too (exit 2)."""
    # Imported when probe runs: every command's parser is built at start-up, and the
    # probe's client and runner (asyncio, ssl) are not needed by the other commands.
    from smtpguard.probe.client import ConnectFailed
    from smtpguard.probe.render import render_error_json, render_json, render_table
    from smtpguard.probe.runner import run_probe

    try:
        opts = options_from_args(args)
        try:
            report = asyncio.run(run_probe(opts))
        except ConnectFailed as exc:
            raise CliError(str(exc)) from None
    except CliError as exc:
        if args.json:
            render_error_json(args.target, str(exc), sys.stdout)
        raise
    (render_json if args.json else render_table)(report, sys.stdout)
    return report.exit_code
