"""Exchange 2007+ SmtpReceive / SmtpSend protocol logs (CSV, ``#Fields:`` header).

Columns: ``date-time, connector-id, session-id, sequence-number, local-endpoint,
remote-endpoint, event, data, context``. Events: ``+`` connect, ``-`` disconnect,
``<`` received, ``>`` sent, ``*`` information. In a Receive log ``<`` is the
client's command and ``>`` our reply; in a Send log it is the other way round
(``#Log-type: SMTP Send Protocol Log``). Both meet the same session model, so a
354 with no final reply before ``-`` is a stall on either side.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

from smtpguard.core.grammar import parse_command, parse_reply_line

from .. import rules
from ..model import ClientCommand, Connect, Disconnect, Event, ServerReply, Side
from ..timefmt import parse_iso
from . import Context, Lines

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


def sniff(lines: list[bytes]) -> int:
    score = 0
    for raw in lines[:40]:
        if (raw.startswith(b"#Log-type: SMTP ") and b"Protocol Log" in raw) or raw.startswith(
            b"#Fields: date-time,connector-id,session-id"
        ):
            score += 30
    return score


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    fields = _DEFAULT_FIELDS
    side = Side.RECEIVING
    for no, raw in lines:
        text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        if text.startswith("#"):
            if text.startswith("#Fields:"):
                fields = [f.strip() for f in text[len("#Fields:") :].split(",")]
            elif text.startswith("#Log-type:"):
                side = Side.SENDING if "Send" in text else Side.RECEIVING
            continue
        if not text:
            continue
        try:
            values = next(csv.reader([text]))
        except (csv.Error, StopIteration):
            continue
        row = dict(zip(fields, values, strict=False))
        sid = row.get("session-id", "")
        time = parse_iso(row.get("date-time", ""))
        event = row.get("event", "")
        data = row.get("data", "")
        if event == "+":
            remote = row.get("remote-endpoint", "")
            peer = remote if side is Side.SENDING else rules.strip_port(remote)
            yield Connect(no, time, sid, peer, side)
        elif event == "-":
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
