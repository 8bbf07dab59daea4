"""Zeek ``smtp.log``, TSV (``#fields`` header) or JSON lines.

One record per SMTP transaction as the sensor saw it; a connection (``uid``) is a
session. ``last_reply`` is the last server reply of the transaction: a record that
ends on ``354`` is a DATA whose end was never answered (``stalled_data``); one that
ends on 2xx after message content (a Message-ID, headers, file ids, or a reply that
says it queued the message) is a delivered copy for the duplicate index (Message-ID
from ``msg_id``, envelope from ``mailfrom`` / ``rcptto``; smtp.log carries no size).
A record without ``last_reply`` (a one-sided capture) says nothing about the reply.
A record exported from Splunk (``{"result": {"_raw": "<zeek json>"}}``) is unwrapped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..model import Delivered, Event, Flag, Kind
from ..timefmt import from_epoch, parse_iso
from .base import Context, Lines, RecentIds

NAME = "zeek"
# An end-of-data reply as MTAs word it ("250 OK id=1Mugho-…", "250 2.0.0 Ok: queued as …").
_QUEUED = re.compile(r"(?i)\bqueued\b|\bid=|\baccepted\b|\bmessage\b")


def sniff(lines: list[bytes]) -> int:
    score = 0
    for raw in lines[:60]:
        if raw.startswith((b"#path\tsmtp", b"#fields\tts\tuid")):
            score += 20
        elif raw.startswith(b"{") and b'"uid"' in raw and b'"id.orig_h"' in raw:
            score += 10
    return score


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    uids = RecentIds()
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
                record = _unwrap(json.loads(text))
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
        if isinstance(record, dict) and "uid" in record:
            if uids.add(str(record["uid"])):
                stats.sessions += 1
            yield from _transaction(no, record)
        else:
            stats.unknown += 1


def _unwrap(obj: Any) -> Any:
    """A Splunk export row carries the Zeek record as a JSON string in result._raw."""
    result = obj.get("result") if isinstance(obj, dict) else None
    raw = result.get("_raw") if isinstance(result, dict) else None
    if isinstance(raw, str) and raw.startswith("{"):
        try:
            return json.loads(raw)
        except ValueError:
            return obj
    return obj


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
    sender = str(r["mailfrom"]).strip("<>") if "mailfrom" in r else None
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
    content = msgid or r.get("fuids") or any(r.get(k) for k in ("date", "from", "subject"))
    if stalled or (last.startswith("2") and rcpt_to and (content or _QUEUED.search(last))):
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
