"""Exchange 2007+ SmtpReceive / SmtpSend protocol logs (CSV, ``#Fields:`` header).

Columns: ``date-time, connector-id, session-id, sequence-number, local-endpoint,
remote-endpoint, event, data, context``. Events: ``+`` connect, ``-`` disconnect,
``<`` received, ``>`` sent, ``*`` information. In a Receive log ``<`` is the
client's command and ``>`` our reply; in a Send log it is the other way round
(``#Log-type: SMTP Send Protocol Log``). Both meet the same session model, so a
354 with no final reply before ``-`` is a stall on either side. A log without its
header (an excerpt) is recognised by its rows; which side wrote it is read from its
first rows (``LOOKAHEAD``, held back and then replayed): a Send log's connector
"attempting to connect", its ``<`` rows are replies (three digits) and its ``>`` rows
commands; a Receive log the other way round. Rows with an empty event field (Exchange
writes some) and blank lines between rows are skipped. A session opens at its first
row: in a Send log that is ``*`` "attempting to connect", before its ``+``, so a
``+`` of a session already open is not a second session.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable, Iterator

from smtpguard.core.grammar import parse_command, parse_reply_line

from .. import rules
from ..model import ClientCommand, Connect, Disconnect, Event, ServerReply, Side
from ..timefmt import parse_iso
from .base import Context, Lines, RecentIds

NAME = "exchange"
_DEFAULT_FIELDS = [
    "date-time",
    "connector-id",
    "session-id",
    "sequence-number",
    "local-endpoint",
    "remote-endpoint",
    "event",
    "data",
    "context",
]


_EVENTS = frozenset({"+", "-", "<", ">", "*", ""})
# Rows read ahead of a header-less log to tell a Send log from a Receive log.
LOOKAHEAD = 200
_REPLY = re.compile(r"\d{3}(?:[ -]|$)")
_ROW = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z?,[^,]*,[0-9A-Za-z]{8,},\d+,")


def sniff(lines: list[bytes]) -> int:
    score = 0
    for raw in lines[:60]:
        if (raw.startswith(b"#Log-type: SMTP ") and b"Protocol Log" in raw) or raw.startswith(
            b"#Fields: date-time,connector-id,session-id"
        ):
            score += 30
        elif _ROW.match(raw):
            values = _values(raw)
            if len(values) > 6 and values[6] in _EVENTS:
                score += 10
    return score


def _values(raw: bytes) -> list[str]:
    text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
    try:
        return next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return []


def _side(head: Iterable[bytes]) -> Side:
    """Which side wrote a log, from its header or its first rows (module docstring)."""
    for raw in head:
        if raw.startswith(b"#Log-type:"):
            return Side.SENDING if b"Send" in raw else Side.RECEIVING
        if raw.startswith(b"#") or not _ROW.match(raw):
            continue
        values = _values(raw)
        if len(values) < 8:
            continue
        event, data = values[6], values[7]
        if "attempting to connect" in ",".join(values[7:]):
            return Side.SENDING
        if event in ("<", ">") and data:
            reply = _REPLY.match(data) is not None
            return Side.SENDING if reply == (event == "<") else Side.RECEIVING
    return Side.RECEIVING


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    fields = _DEFAULT_FIELDS
    rest = iter(lines)
    head = list(itertools.islice(rest, LOOKAHEAD))
    side = _side(raw for _, raw in head)
    seen = RecentIds()  # sessions already opened (a log may start mid-session)
    for no, raw in itertools.chain(head, rest):
        text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        if text.startswith("#"):
            if text.startswith("#Fields:"):
                fields = [f.strip() for f in text[len("#Fields:") :].split(",")]
            elif text.startswith("#Log-type:"):
                side = Side.SENDING if "Send" in text else Side.RECEIVING
            continue
        if not text.strip():
            continue
        try:
            values = next(csv.reader([text]))
        except (csv.Error, StopIteration):
            values = []
        row = dict(zip(fields, values, strict=False))
        if row.get("event", "?").strip() not in _EVENTS or not row.get("session-id"):
            stats.unknown += 1
            continue
        sid = row.get("session-id", "")
        time = parse_iso(row.get("date-time", ""))
        event = row.get("event", "")
        data = row.get("data", "")
        if seen.add(sid):
            remote = row.get("remote-endpoint", "")
            peer = remote if side is Side.SENDING else rules.strip_port(remote)
            yield Connect(no, time, sid, peer, side)
        if event == "-":
            yield Disconnect(no, time, sid)
        elif event in ("<", ">"):
            from_client = (event == "<") == (side is Side.RECEIVING)
            body = data.encode("utf-8", "surrogateescape")
            if from_client:
                cmd = parse_command(body)
                if cmd is not None:
                    yield ClientCommand(no, time, sid, cmd)
            else:
                reply = parse_reply_line(body)
                if reply is not None:
                    yield ServerReply(no, time, sid, reply)
