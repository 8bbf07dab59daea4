"""Zeek ``smtp.log``, TSV (``#fields`` header) or JSON lines.

One record per SMTP transaction as the sensor saw it. ``last_reply`` is the last
server reply of the transaction: a record that ends on ``354`` is a DATA whose end
was never answered (``stalled_data``); one that ends on 2xx is a delivered copy for
the duplicate index (Message-ID from ``msg_id``, envelope from ``mailfrom`` /
``rcptto``; smtp.log carries no size).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..model import Delivered, Event, Flag, Kind
from ..timefmt import from_epoch, parse_iso
from . import Context, Lines

NAME = "zeek"


def sniff(lines: list[bytes]) -> int:
    score = 0
    for raw in lines[:60]:
        if raw.startswith((b"#path\tsmtp", b"#fields\tts\tuid")):
            score += 20
        elif raw.startswith(b"{") and b'"uid"' in raw and b'"id.orig_h"' in raw:
            score += 10
    return score


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    fields: list[str] = []
    sep, set_sep, empty, unset = "\t", ",", "(empty)", "-"
    for no, raw in lines:
        text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        if not text:
            continue
        if text.startswith("#"):
            key, _, value = text[1:].partition(sep if not text.startswith("#separator") else " ")
            if key == "separator":
                sep = value.encode().decode("unicode_escape")
            elif key == "set_separator":
                set_sep = value
            elif key == "empty_field":
                empty = value
            elif key == "unset_field":
                unset = value
            elif key == "fields":
                fields = value.split(sep)
            continue
        record: dict[str, Any] | None
        if text.startswith("{"):
            try:
                record = json.loads(text)
            except ValueError:
                record = None
        elif fields:
            values = text.split(sep)
            record = {}
            for k, v in zip(fields, values, strict=False):
                if v in (unset, empty):
                    continue
                record[k] = v.split(set_sep) if k in ("rcptto", "to", "cc", "path") else v
        else:
            record = None
        if isinstance(record, dict):
            yield from _transaction(no, record)


def _transaction(no: int, r: dict[str, Any]) -> Iterator[Event]:
    ts = r.get("ts")
    time: datetime | None
    if isinstance(ts, int | float) or (isinstance(ts, str) and _is_number(ts)):
        time = from_epoch(float(ts))
    else:
        time = parse_iso(ts) if isinstance(ts, str) else None
    uid = str(r.get("uid", ""))
    peer = str(r.get("id.orig_h", ""))
    server = str(r.get("id.resp_h", ""))
    last = str(r.get("last_reply", ""))
    rcpts = r.get("rcptto") or []
    rcpt_to = tuple(str(x).strip("<>") for x in (rcpts if isinstance(rcpts, list) else [rcpts]))
    sender = str(r.get("mailfrom", "")).strip("<>")
    msgid = str(r.get("msg_id", "")).strip().strip("<>")
    stalled = last.startswith("354")
    if stalled:
        yield Flag(
            no,
            time,
            uid,
            peer,
            Kind.STALLED_DATA,
            f"{server} answered DATA with 354 but the transaction's last reply is "
            f"still that 354: the end of data (CRLF.CRLF) was never answered — the "
            f"Mailguard signature; the sender will retry",
        )
    if stalled or (last.startswith("2") and (msgid or r.get("fuids"))):
        yield Delivered(
            no,
            time,
            uid,
            peer,
            message_id=msgid,
            mail_from=sender,
            rcpt_to=rcpt_to,
            stalled=stalled,
        )


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
