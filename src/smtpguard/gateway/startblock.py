"""The block ``serve`` prints once every worker serves: what it listens on, where
mail goes, what clients are greeted with, and the warnings an operator must read
(docs/servers.md, docs/security.md). With ``log_format = "json"`` the same block
is one JSON object, as every other line the process writes."""

from __future__ import annotations

import os

from smtpguard import __version__
from smtpguard.applog import JsonFormatter, LogFormat, lifecycle_record
from smtpguard.config.load import Settings
from smtpguard.core.policy import BannerPolicy, Policy, StartTls
from smtpguard.gateway.lifecycle import STARTED
from smtpguard.gateway.upstreams import show
from smtpguard.proxyproto import ProxyVersion
from smtpguard.state.attach import describe


def greeting_shown(policy: Policy) -> str:
    """The greeting clients get, as the startup block shows it."""
    if policy.emulation.pix or policy.banner is BannerPolicy.PIX:
        return "the server's 220, masked PIX-style (2, 0 and *)"
    if policy.banner is BannerPolicy.PASS:
        return "the server's own"
    if policy.banner is BannerPolicy.CUSTOM:
        return f"220 {policy.banner_text}"
    return f"220 {policy.hostname} ESMTP (--hostname or hostname = ... to change)"


# At start-up when the upstream cannot learn the client's address (docs/servers.md).
XCLIENT_OFF_WARNING = [
    "  WARNING       xclient = false: the server sees every client as this gateway's",
    "                address. It must not relay for that address (Postfix",
    "                permit_mynetworks with the gateway in mynetworks makes an open relay);",
    "                use --xclient (Postfix) or --upstream-proxy v2; see docs/servers.md",
]
# At start-up when a refused XCLIENT does not refuse the client (docs/security.md).
XCLIENT_FAIL_OPEN_WARNING = [
    "  WARNING       xclient_fail_open = true: when the server refuses XCLIENT or does",
    "                not offer it, it sees the client as this gateway's address. Postfix's",
    "                default mynetworks (its own addresses and loopback; its subnets with",
    "                mynetworks_style = subnet) trusts that address to relay, so any",
    "                client could relay. Keep the gateway out of mynetworks, or turn",
    "                xclient_fail_open off (the client then gets 421 4.7.0)",
]


def fail_open_warning() -> str:
    """XCLIENT_FAIL_OPEN_WARNING as one log line (a reload that turns it on)."""
    return _warning_text(XCLIENT_FAIL_OPEN_WARNING)


def _warning_text(block: list[str]) -> str:
    return " ".join(line.strip() for line in block).removeprefix("WARNING").strip()


def upstreams_shown(settings: Settings) -> str:
    """Where mail goes, as the start-up block shows it: each server, and with
    several how one is chosen and whether they are checked."""
    names = [show(a) for a in settings.upstreams]
    if len(names) < 2:
        return ", ".join(names)
    g = settings.gateway
    checks = (
        f"checked every {g.upstream_check_interval:g}s"
        if g.upstream_check_interval
        else "no health checks"
    )
    return f"{', '.join(names)} ({g.upstream_policy.value}, {checks})"


def print_banner(
    settings: Settings,
    host: str,
    port: int,
    target: str,
    builtin: bool,
    implicit: tuple[str, int] | None = None,
    down: list[str] | None = None,
) -> None:
    """The start-up block on stdout: aligned lines for a terminal, or with
    ``log_format = "json"`` one JSON object (``SG-GATEWAY-STARTED``) with a field
    per line and the warnings as a list."""
    policy = settings.policy
    shown = f"[{host}]" if ":" in host else host
    title = (
        f"smtpguard {__version__} gateway, {policy.mode.value} mode, banner {policy.banner.value}"
    )
    # (JSON field, label, value) per line of the block; warnings follow their line.
    rows: list[tuple[str, str, str]] = [
        ("listen", "listening on", f"{shown}:{port}"),
        ("upstream", "relaying to", target),
        ("greeting", "greeting", greeting_shown(policy)),
    ]
    # A server that did not answer at start-up (the others take its sessions).
    warnings: list[list[str]] = [
        [f"  WARNING       {why}; sessions go to the others"] for why in down or ()
    ]
    if settings.source:
        rows.append(("config", "config", f"{settings.source} (SIGHUP reloads it)"))
    if builtin:
        maildir = os.path.abspath(settings.gateway.maildir)
        rows.append(("maildir", "mail lands in", f"{maildir} (Maildir)"))
    if settings.protocol_log.path:
        plog = settings.protocol_log
        rows.append(("protocol_log", "protocol log", f"{plog.path} ({plog.format})"))
    emu = policy.emulation
    pix = None
    if emu.pix:
        bug = (
            ", BUG split-eod (CSCds90792) ON: split end of data is swallowed"
            if emu.split_eod_bug
            else ""
        )
        pix = f"PIX EMULATION for labs: rewrite {emu.rewrite.value}, lock-step{bug}"
    if implicit is not None:
        rows.append(("implicit_tls", "implicit TLS", f"{implicit[0]}:{implicit[1]}"))
    if policy.starttls is not StartTls.STRIP:
        rows.append(("starttls", "STARTTLS", policy.starttls.value))
    if settings.metrics_listen is not None:
        mh, mp = settings.metrics_listen
        rows.append(("metrics", "metrics", f"http://{mh}:{mp}/metrics"))
    shared = describe(settings)
    if shared is not None:
        rows.append(("shared_state", "shared state", shared))
    if policy.xclient:
        rows.append(("xclient", "XCLIENT", "on (the server sees the real client address)"))
        if policy.xclient_fail_open:
            warnings.append(XCLIENT_FAIL_OPEN_WARNING)
    elif not builtin and settings.gateway.upstream_proxy_protocol is ProxyVersion.OFF:
        warnings.append(XCLIENT_OFF_WARNING)
    tail = [
        ("try_it", "try it", f"swaks --server {shown}:{port} --to you@example.test"),
        ("stop_with", "stop with", "Ctrl-C (drains sessions in flight)"),
    ]
    if settings.gateway.log_format is LogFormat.JSON:
        fields: dict[str, object] = {key: value for key, _, value in rows + tail}
        if pix is not None:
            fields["emulation"] = pix
        fields["warnings"] = [_warning_text(w) for w in warnings]
        record = lifecycle_record(STARTED, title, **fields)
        print(JsonFormatter().format(record), flush=True)
        return
    lines = [] if pix is None else [f"*** {pix} ***"]
    lines.append(title)
    lines += [f"  {label:<13} {value}" for _, label, value in rows]
    for block in warnings:
        lines += block
    lines += [f"  {label:<13} {value}" for _, label, value in tail]
    print("\n".join(lines), flush=True)
