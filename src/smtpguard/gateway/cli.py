"""``smtpguard serve``: flags to a Policy and a GatewayConfig, then run the gateway."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import sys
from typing import Any

from smtpguard import __version__
from smtpguard.core.policy import BannerPolicy, Mode, Policy, Timeouts
from smtpguard.logs import FORMATS, open_protocol_log
from smtpguard.netaddr import parse_hostport

TIMEOUT_KEYS = tuple(f.name for f in dataclasses.fields(Timeouts))


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the SMTP inspection gateway",
        description="Listen for SMTP, relay to the upstream server, inspect every byte.",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:2525",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:2525)",
    )
    p.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        help="the real mail server; default: the built-in mailbox on loopback",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default="mailguard",
        help="mailguard: the seven RFC 821 commands only (default); "
        "esmtp: ASA-style ESMTP inspection",
    )
    p.add_argument(
        "--banner",
        default="generic",
        metavar="generic|pix|pass|TEXT",
        help="greeting policy: generic (default), pix mask, pass, or custom text",
    )
    p.add_argument(
        "--hostname",
        default=socket.getfqdn() or "localhost",
        help="name in the generic banner (default: this host's name)",
    )
    p.add_argument("--protocol-log", metavar="FILE", help="append a protocol log to FILE")
    p.add_argument(
        "--protocol-log-format",
        choices=FORMATS,
        default="ims",
        help="ims (Exchange IMS layout, default) or jsonl",
    )
    p.add_argument(
        "--maildir",
        default="./smtpguard-mail",
        metavar="DIR",
        help="built-in mailbox Maildir (default ./smtpguard-mail)",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=1000,
        metavar="N",
        help="concurrent sessions; more get 421 (default 1000)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port with SO_REUSEPORT (default 1)",
    )
    p.add_argument(
        "--drain-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, time allowed for transactions in flight (default 30)",
    )
    p.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help=f"override a timeout; NAME is one of {', '.join(TIMEOUT_KEYS)}",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="application log level on stderr (default warning)",
    )
    p.set_defaults(func=run)


def build_policy(args: argparse.Namespace) -> Policy:
    from smtpguard.cli import CliError

    timeouts: dict[str, float] = {}
    for item in args.timeout:
        name, sep, value = item.partition("=")
        if not sep or name not in TIMEOUT_KEYS:
            raise CliError(
                f"--timeout {item!r}: expected NAME=SECONDS with NAME one of "
                f"{', '.join(TIMEOUT_KEYS)}"
            )
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if seconds <= 0:
            raise CliError(f"--timeout {item!r}: SECONDS must be a positive number")
        timeouts[name] = seconds
    banner_names = {b.value for b in BannerPolicy} - {"custom"}
    if args.banner in banner_names:
        banner, text = BannerPolicy(args.banner), ""
    else:
        if not args.banner.strip() or any(c in args.banner for c in "\r\n\0"):
            raise CliError("--banner: custom text must be one non-empty line")
        banner, text = BannerPolicy.CUSTOM, args.banner.strip()
    if args.max_sessions < 1:
        raise CliError("--max-sessions: must be at least 1")
    return Policy.for_mode(
        Mode(args.mode),
        banner=banner,
        banner_text=text,
        hostname=args.hostname,
        timeouts=Timeouts(**timeouts),
    )


def run(args: argparse.Namespace) -> int:
    from smtpguard.cli import CliError
    from smtpguard.gateway.server import GatewayConfig
    from smtpguard.gateway.workers import bind_listeners, run_workers

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    policy = build_policy(args)
    if args.workers < 1:
        raise CliError("--workers: must be at least 1")
    lhost, lport = parse_hostport(args.listen, "--listen")
    upstream = parse_hostport(args.upstream, "--upstream") if args.upstream else None
    sink_sock = None
    if upstream is None:
        sink_sock = bind_listeners("127.0.0.1", 0, 1)[0]
        upstream = ("127.0.0.1", sink_sock.getsockname()[1])
        target = f"built-in mailbox at 127.0.0.1:{upstream[1]}"
    else:
        _check_reachable(*upstream)
        target = f"{upstream[0]}:{upstream[1]}"
    try:
        socks = bind_listeners(lhost, lport, args.workers)
    except OSError as exc:
        raise CliError(f"--listen {args.listen}: cannot listen: {exc.strerror or exc}") from None
    config = GatewayConfig(
        listen_host=lhost,
        listen_port=lport,
        upstream_host=upstream[0],
        upstream_port=upstream[1],
        max_sessions=args.max_sessions,
        drain_grace=args.drain_grace,
    )
    host, port = socks[0].getsockname()[:2]
    _print_banner(policy, host, port, target, args, sink_sock is not None)

    def worker(sock: socket.socket, index: int) -> int:
        # The built-in mailbox runs in the first worker's event loop.
        mine = sink_sock if index == 0 else None
        if sink_sock is not None and mine is None:
            sink_sock.close()
        _use_uvloop()
        return asyncio.run(_serve(args, config, policy, sock, mine))

    if args.workers == 1:
        return worker(socks[0], 0)
    return run_workers(socks, worker)


def _use_uvloop() -> None:
    if os.environ.get("SMTPGUARD_NO_UVLOOP"):
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(
    args: argparse.Namespace,
    config: Any,
    policy: Policy,
    sock: socket.socket,
    sink_sock: socket.socket | None,
) -> int:
    from smtpguard.gateway.server import Gateway
    from smtpguard.sink import start_sink

    sink_server = None
    if sink_sock is not None:
        sink_server, _, _ = await start_sink("127.0.0.1", 0, args.maildir, sock=sink_sock)
    plog = (
        open_protocol_log(args.protocol_log, args.protocol_log_format)
        if args.protocol_log
        else None
    )
    gateway = Gateway(config, policy, plog)
    await gateway.start(sock)
    await gateway.serve_until_signalled()
    if sink_server is not None:
        sink_server.close()
    return 0


def _check_reachable(host: str, port: int) -> None:
    from smtpguard.cli import CliError

    try:
        socket.create_connection((host, port), 5).close()
    except OSError as exc:
        reason = exc.strerror or "timed out"
        raise CliError(f"--upstream {host}:{port}: not reachable ({reason})") from None


def _print_banner(
    policy: Policy, host: str, port: int, target: str, args: argparse.Namespace, builtin: bool
) -> None:
    shown = f"[{host}]" if ":" in host else host
    lines = [
        f"smtpguard {__version__} gateway, {policy.mode.value} mode, banner {policy.banner.value}",
        f"  listening on  {shown}:{port}",
        f"  relaying to   {target}",
    ]
    if builtin:
        lines.append(f"  mail lands in {os.path.abspath(args.maildir)} (Maildir)")
    if args.protocol_log:
        lines.append(f"  protocol log  {args.protocol_log} ({args.protocol_log_format})")
    lines.append(f"  try it        swaks --server {shown}:{port} --to you@example.test")
    lines.append("  stop with     Ctrl-C (drains sessions in flight)")
    print("\n".join(lines), flush=True)
