"""Exchange 2007+ message tracking log (``MSGTRK*.LOG``, CSV, ``#Fields:`` header).

One row per event in a message's life on one server: ``RECEIVE`` (source SMTP: from
another server or client; STOREDRIVER: submitted from a mailbox), ``DELIVER`` (into
a mailbox), ``SEND``, ``SUBMIT``, ``FAIL``, ``DSN``… Columns come from the last
``#Fields:`` line; a log without its header is read with the Exchange 2013+ columns
when the twelfth value is a network-message-id GUID, else with the 2007/2010 ones.

This is where an Exchange administrator looks for duplicates: every ``RECEIVE`` and
every ``DELIVER`` row is one copy of a message for each recipient it names, keyed on
Message-ID + recipient (:mod:`smtpguard.logscan.dedupe`). A copy's ``RECEIVE`` and its
``DELIVER`` are two hops of one copy, not two copies: the event and the server that
logged it are part of the key (``Delivered.leg``), so the same Message-ID received
twice by one server, or delivered twice into one mailbox, is what makes a duplicate.
A tracking log has no SMTP dialogue: it cannot show a stalled DATA.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator

from smtpguard.core.grammar import ascii_number

from ..model import Delivered, Event
from ..timefmt import parse_iso
from .base import Context, Lines, RecentIds

NAME = "msgtrk"
FIELDS_2013 = [
    "date-time",
    "client-ip",
    "client-hostname",
    "server-ip",
    "server-hostname",
    "source-context",
    "connector-id",
    "source",
    "event-id",
    "internal-message-id",
    "message-id",
    "network-message-id",
    "recipient-address",
    "recipient-status",
    "total-bytes",
    "recipient-count",
    "related-recipient-address",
    "reference",
    "message-subject",
    "sender-address",
    "return-path",
    "message-info",
    "directionality",
    "tenant-id",
    "original-client-ip",
    "original-server-ip",
    "custom-data",
    "transport-traffic-type",
    "log-id",
    "schema-version",
]
FIELDS_2010 = [f for f in FIELDS_2013 if f != "network-message-id"][:26]
# Tracking events (Exchange 2007-2019 "event-id" values); rows with others are unknown.
EVENTS = frozenset(
    [
        "AGENTINFO",
        "BADMAIL",
        "CLIENTSUBMISSION",
        "DEFER",
        "DELIVER",
        "DELIVERFAIL",
        "DROP",
        "DSN",
        "DUPLICATEDELIVER",
        "DUPLICATEEXPAND",
        "DUPLICATEREDIRECT",
        "EXPAND",
        "FAIL",
        "HADISCARD",
        "HARECEIVE",
        "HAREDIRECT",
        "HAREDIRECTFAIL",
        "INITMESSAGECREATED",
        "LOAD",
        "MODERATIONEXPIRE",
        "MODERATORAPPROVE",
        "MODERATORREJECT",
        "MODERATORSALLNDR",
        "NOTIFYMAPI",
        "NOTIFYSHADOW",
        "POISONMESSAGE",
        "PROCESS",
        "PROCESSMEETINGMESSAGE",
        "RECEIVE",
        "REDIRECT",
        "RESOLVE",
        "RESUBMIT",
        "RESUBMITDEFER",
        "RESUBMITFAIL",
        "SEND",
        "SENDEXTERNAL",
        "SUBMIT",
        "SUBMITDEFER",
        "SUBMITFAIL",
        "SUPPRESSED",
        "THROTTLE",
        "TRANSFER",
    ]
)
COPY_EVENTS = frozenset({"RECEIVE", "DELIVER"})
_ROW = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z?,")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def sniff(lines: list[bytes]) -> int:
    score = 0
    for raw in lines[:60]:
        if raw.startswith(b"#Log-type: Message Tracking Log") or raw.startswith(
            b"#Fields: date-time,client-ip,client-hostname,server-ip"
        ):
            score += 40
        elif _ROW.match(raw) and _event(_split(raw)) is not None:
            score += 10
    return score


def _split(raw: bytes) -> list[str]:
    text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
    try:
        return next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return []


def _event(values: list[str]) -> str | None:
    """The event-id of a row (the ninth column in 2007, 2010 and 2013+), if it is one."""
    event = _at(values, 8)
    return event if event in EVENTS else None


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    fields: list[str] | None = None
    seen = RecentIds()  # (server, internal id): one session per message copy on a server
    for no, raw in lines:
        if raw.startswith(b"#"):
            if raw.startswith(b"#Fields:"):
                text = raw.decode("utf-8", "surrogateescape")[len("#Fields:") :]
                fields = [f.strip() for f in text.split(",")]
            continue
        if not raw.strip():
            continue
        values = _split(raw)
        event = _event(values)
        if event is None or not _ROW.match(raw):
            stats.unknown += 1
            continue
        cols = fields or (FIELDS_2013 if _GUID.fullmatch(_at(values, 11)) else FIELDS_2010)
        row = dict(zip(cols, values, strict=False))
        server = row.get("server-hostname", "")
        internal = row.get("internal-message-id", "")
        if internal and seen.add((server, internal)):
            stats.sessions += 1
        if event not in COPY_EVENTS:
            continue
        time = parse_iso(row.get("date-time", ""))
        message_id = row.get("message-id", "").strip().strip("<>")
        size = row.get("total-bytes", "")
        sender = row.get("sender-address", "")
        if event == "RECEIVE":
            peer = row.get("client-hostname", "") or row.get("client-ip", "")
        else:
            peer = server or row.get("server-ip", "")
        for rcpt in filter(None, (r.strip() for r in row.get("recipient-address", "").split(";"))):
            yield Delivered(
                no,
                time,
                internal,
                peer,
                message_id=message_id,
                mail_from=sender or None,
                rcpt_to=(rcpt,),
                size=n if (n := ascii_number(size)) >= 0 else None,
                leg=f"{event}@{server}",
                start=time,
                end=time,
            )


def _at(values: list[str], i: int) -> str:
    return values[i] if len(values) > i else ""
