"""Exim mainlog (3.x/4.x, old ``1Ai79e-0000Dq-8i`` and 4.97+ ``10HmaX-000000005vi-0000`` ids).

Receiving side: ``SMTP data timeout (message abandoned) on connection from H [ip]``
and ``SMTP connection [Ci=…] from H [ip] lost while reading message data`` (Exim
4.98+ puts the connection id before ``from``) are stalls. A data timeout on a local
``-bs`` process ("on connection from local process") is not a network path and not
a finding. Sending side: a delivery attempt (``==``) that ends with ``SMTP timeout
after end of data`` or ``closed connection in response to end of data`` is a stall;
a reply after the end of data (``SMTP error … after end of data: 451 …``) is not.
Deliveries come from ``<=`` arrivals over SMTP (``H=``, ``S=`` size, ``id=``
Message-ID) completed by the ``=>``/``->`` recipient lines and ``Completed``.
Sessions: Exim logs no session id but ``Ci=`` (4.92+: the connection's process id), so
a line with ``Ci=`` counts its id once. Without it, a session shows by the one line
Exim writes when it ends: ``SMTP connection from … closed by QUIT``/``lost``/``closed by
DROP in ACL`` (``+smtp_connection``), ``no MAIL in SMTP connection from``, ``SMTP call
from … dropped``, an SMTP command or data timeout, an unexpected disconnection, a
synchronization error's ``rejected connection``, a connect ACL's drop or rejection; and
with ``+smtp_connection`` by the line it writes when it begins (``SMTP connection from
… (TCP/IP connection count = N)``). A begin and an end from the same address are one
session: an end line counts only when no begin from that address is still open.
Lines may carry a ``[pid]`` prefix, a syslog prefix (``host exim[pid]:``) before or
after the stamp.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

from ..model import Delivered, Event, Flag, Kind
from ..timefmt import parse_iso
from .base import Context, Lines, RecentIds

NAME = "exim"
MAX_PENDING_MESSAGES = 100_000

_STAMP = rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)?(?: ([+-]\d{4}))?"
_SYSLOG = rb"(?:\S+ (?:\S+ )?exim\[\d+\]: )?"
_HEAD = re.compile(_SYSLOG + _STAMP + rb" " + _SYSLOG + rb"(?:\[\d+\] )?")
_ID = rb"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}"
_MSG = re.compile(rb"(" + _ID + rb") (<=|=>|->|\*>|==|\*\*|Completed)")
_MSG_ID = re.compile(_ID + rb" ")
_HOST = re.compile(rb" H=(.*?\[[^\]\s]+\])")
_SIZE = re.compile(rb" S=(\d+)")
_MSGID = re.compile(rb" id=(\S+)")
_FOR = re.compile(rb" for (.+)$")
_CI = re.compile(rb" Ci=(\S+)")
_STALL_IN = re.compile(
    rb"SMTP (?:data timeout \(message abandoned\) on connection from (.*?\])"
    rb"|connection (?:Ci=\S+ )?from (.*?\](?::\d+)?).*? lost while reading message data)"
)
# The line that begins a session (log_selector +smtp_connection) and those that end one.
_SESSION_START = re.compile(rb"SMTP connection (?:Ci=\S+ )?from .*\(TCP/IP connection count = \d+")
_SESSION_END = re.compile(
    rb"(?:SMTP connection (?:Ci=\S+ )?from |no MAIL in SMTP connection from |SMTP call from "
    rb"|SMTP (?:command|data) timeout |unexpected disconnection while reading SMTP command"
    rb"|SMTP protocol synchronization error .*?rejected connection from "
    rb"|H=.*? (?:rejected connection in|dropped by) [\"']connect[\"'] ACL)"
)
_ADDRESS = re.compile(rb"\[([0-9A-Fa-f:.]+)\]")
# Addresses with a begun session whose end line has not come yet.
MAX_OPEN_ADDRESSES = 100_000
_STALL_OUT = re.compile(rb"timeout after end of data|closed connection in response to end of data")
# What else Exim writes that this parser reads past on purpose (docs/logscan.md).
_KNOWN = re.compile(
    rb"(?:SMTP |NOTQUIT reason|no MAIL in SMTP connection|H=|F=|U=|rejected|\S+ authenticator"
    rb"|no (?:host name|IP address) found|exim \S+ daemon started|(?:Start|End) queue run"
    rb"|timed out while reading local message|SA: |Warning: |removed by|\S+: error ignored"
    rb"|Frozen|Unfrozen|cancelled by|Spool file|Message is frozen|retry time not reached"
    rb"|sender verify|unexpected disconnection|TLS error|DKIM|DMARC|Remote host closed"
    rb"|lowest numbered MX|Connection (?:refused|timed out)|SMTP error|temporarily rejected"
    rb"|\S+ \[\S+\]: )"
)


class _Arrival:
    __slots__ = ("line", "message_id", "peer", "rcpt_to", "sender", "session", "size", "time")

    def __init__(self, line: int, time: datetime | None, session: str) -> None:
        self.line, self.time, self.session = line, time, session
        self.peer = self.sender = self.message_id = ""
        self.size: int | None = None
        self.rcpt_to: list[str] = []


def sniff(lines: list[bytes]) -> int:
    score = 0
    for raw in lines:
        m = _HEAD.match(raw)
        if m is None:
            continue
        pos = m.end()
        if _MSG.match(raw, pos):
            score += 4
            continue
        id_ = _MSG_ID.match(raw, pos)
        if id_ is not None:
            pos = id_.end()
        if raw.startswith((b"SMTP ", b"NOTQUIT reason", b"timed out while reading"), pos) or (
            raw.startswith(b"exim ", pos) and b" daemon started" in raw
        ):
            score += 4
        elif b" authenticator failed for " in raw or b" rejected " in raw[pos:]:
            score += 2
    return score


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _time(m: re.Match[bytes]) -> datetime | None:
    stamp = _s(m.group(1))
    if m.group(2):
        stamp += _s(m.group(2))
    return parse_iso(stamp)


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    connections = RecentIds()
    begun: dict[bytes, int] = {}  # address → sessions begun and not yet ended (no Ci=)
    pending: dict[bytes, _Arrival] = {}
    for no, raw in lines:
        h = _HEAD.match(raw)
        if h is None:
            if raw.strip():
                stats.unknown += 1
            continue
        raw = raw.rstrip(b"\r\n")
        time = _time(h)
        ci = _CI.search(raw, h.end())
        if ci is not None and connections.add(ci.group(1)):
            stats.sessions += 1
        m = _MSG.match(raw, h.end())
        if m is None:
            if ci is None:
                stats.sessions += _session_edge(raw, h.end(), begun)
            s = _STALL_IN.search(raw, h.end())
            if s is not None:
                peer = _s(s.group(1) or s.group(2))
                yield Flag(
                    no,
                    time,
                    "",
                    peer,
                    Kind.STALLED_DATA,
                    "the client got 354 but its end of data (CRLF.CRLF) never "
                    "arrived and Exim gave up on the message, as when a filter "
                    "(Mailguard) holds it back; the message was not accepted",
                )
                continue
            id_ = _MSG_ID.match(raw, h.end())
            if _KNOWN.match(raw, id_.end() if id_ else h.end()) is None:
                stats.unknown += 1
            continue
        mid, op = m.group(1), m.group(2)
        rest = raw[m.end() :]
        session = _s(mid)
        if op == b"<=":
            host = _HOST.search(rest)
            if host is None:
                continue  # local submission, not an SMTP delivery
            a = _Arrival(no, time, session)
            a.peer = _s(host.group(1))
            a.sender = _s(rest.split(None, 1)[0]) if rest.strip() else ""
            if a.sender == "<>":
                a.sender = ""
            size, msgid, rcpts = _SIZE.search(rest), _MSGID.search(rest), _FOR.search(rest)
            a.size = int(size.group(1)) if size else None
            a.message_id = _s(msgid.group(1)) if msgid else ""
            if rcpts:
                a.rcpt_to = [_s(r) for r in rcpts.group(1).split()]
            if len(pending) >= MAX_PENDING_MESSAGES:
                yield _delivered(pending.pop(next(iter(pending))))
            pending[mid] = a
        elif op in (b"=>", b"->", b"*>"):
            a_ = pending.get(mid)
            rcpt = _rcpt(rest)
            if a_ is not None and rcpt and rcpt not in a_.rcpt_to:
                a_.rcpt_to.append(rcpt)
        elif op == b"==" and _STALL_OUT.search(rest):
            host = _HOST.search(rest)
            yield Flag(
                no,
                time,
                session,
                _s(host.group(1)) if host else "",
                Kind.STALLED_DATA,
                f"message {session}: the remote server never answered our end of "
                f"data (CRLF.CRLF); the message may have been delivered and will be "
                f"sent again; what a filter that holds back the terminator (Mailguard) "
                f"causes",
            )
        elif op == b"Completed":
            a_ = pending.pop(mid, None)
            if a_ is not None:
                yield _delivered(a_)
    for a in pending.values():
        yield _delivered(a)


def _session_edge(raw: bytes, pos: int, begun: dict[bytes, int]) -> int:
    """1 when the line (without ``Ci=``) begins a session, or ends one whose begin was
    not seen; else 0 (see the module docstring)."""
    id_ = _MSG_ID.match(raw, pos)
    if id_ is not None:
        pos = id_.end()
    end = _SESSION_END.match(raw, pos)
    if end is None:
        return 0
    a = _ADDRESS.search(raw, end.end())
    address = a.group(1) if a is not None else b"local"
    if _SESSION_START.match(raw, pos):
        if address not in begun and len(begun) >= MAX_OPEN_ADDRESSES:
            del begun[next(iter(begun))]
        begun[address] = begun.get(address, 0) + 1
        return 1
    n = begun.pop(address, 0)
    if n > 1:
        begun[address] = n - 1
    return 0 if n else 1


def _rcpt(rest: bytes) -> str:
    """``bob <bob@domain2.com> R=...`` → the address in brackets, else the first word."""
    parts = rest.split(None, 2)
    if len(parts) > 1 and parts[1].startswith(b"<") and parts[1].endswith(b">"):
        return _s(parts[1][1:-1])
    return _s(parts[0]) if parts else ""


def _delivered(a: _Arrival) -> Delivered:
    return Delivered(
        a.line,
        a.time,
        a.session,
        a.peer,
        message_id=a.message_id,
        mail_from=a.sender,
        rcpt_to=tuple(a.rcpt_to),
        size=a.size,
    )
