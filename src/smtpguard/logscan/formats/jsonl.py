"""smtpguard's own ``jsonl`` protocol log: one JSON object per event.

Keys: ``ts`` (ISO-8601 with offset), ``session``, ``event`` (connect, command,
reply, data, policy, disconnect), ``dir`` (client>gw, gw>server, server>gw,
gw>client), ``peer`` (connect), ``verb``/``line`` (command), ``code``/``line``
(reply), ``size`` (data), ``id``/``message`` (policy).

Only the client leg (client>gw commands, gw>client replies) feeds the session
model: that is what the sender saw. A 354 to the client with no later gw>client
reply before ``disconnect`` is a stall. The upstream leg is not judged — the
gateway deliberately abandons an upstream DATA when it rejects a message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from smtpguard.core.actions import Direction
from smtpguard.core.grammar import ReplyLine, parse_command, parse_reply_line

from .. import rules
from ..model import ClientCommand, Connect, DataSize, Disconnect, Event, Flag, Kind, ServerReply
from ..timefmt import parse_iso
from . import Context, Lines

NAME = "jsonl"
_CLIENT_TO_GW = Direction.CLIENT_TO_GW.value  # the writer's vocabulary (smtpguard.logs)
_GW_TO_CLIENT = Direction.GW_TO_CLIENT.value


def sniff(lines: list[bytes]) -> int:
    score = 0
    for raw in lines[:50]:
        obj = _load(raw)
        if obj is not None and "session" in obj and "event" in obj:
            score += 10
    return score


def _load(raw: bytes) -> dict[str, Any] | None:
    raw = raw.strip()
    if not raw.startswith(b"{"):
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    for no, raw in lines:
        obj = _load(raw)
        if obj is None or "event" not in obj:
            if raw.strip():
                stats.unknown += 1
            continue
        session = str(obj.get("session", ""))
        event = obj.get("event")
        ts = obj.get("ts")
        time = parse_iso(ts) if isinstance(ts, str) else None
        direction = obj.get("dir")
        if event == "connect":
            yield Connect(no, time, session, rules.strip_port(str(obj.get("peer", ""))))
        elif event == "disconnect":
            yield Disconnect(no, time, session)
        elif event == "command" and direction == _CLIENT_TO_GW:
            line = str(obj.get("line") or obj.get("verb") or "")
            cmd = parse_command(line.encode("utf-8", "surrogateescape"))
            if cmd is not None:
                yield ClientCommand(no, time, session, cmd)
        elif event == "reply" and direction == _GW_TO_CLIENT:
            reply = _reply(obj)
            if reply is not None:
                yield ServerReply(no, time, session, reply)
        elif event == "data" and direction in (_CLIENT_TO_GW, None):
            size = obj.get("size")
            if isinstance(size, int):
                yield DataSize(no, time, session, size)
        elif event == "policy" and obj.get("id") == "SG-DEDUPE-SUPPRESSED":
            # The gateway answered a re-sent copy itself ([dedupe], docs/events.md).
            yield Flag(no, time, session, "", Kind.SUPPRESSED, str(obj.get("message", "")))


def _reply(obj: dict[str, Any]) -> ReplyLine | None:
    line = obj.get("line")
    if isinstance(line, str):
        parsed = parse_reply_line(line.encode("utf-8", "surrogateescape"))
        if parsed is not None:
            return parsed
    code = obj.get("code")
    if isinstance(code, int) and 200 <= code < 600:
        return ReplyLine(code, True, str(line or ""))
    return None
