"""smtpguard's own ``jsonl`` protocol log: one JSON object per event.

Keys: ``ts`` (ISO-8601 with offset), ``session``, ``event`` (connect, command,
reply, data, policy, disconnect), ``dir`` (client>gw, gw>server, server>gw,
gw>client), ``peer`` (connect), ``verb``/``line`` (command), ``code``/``line``
(reply), ``size`` and ``message_id`` (data; the Message-ID field's identifier, absent
in older logs and when the message has none), ``id``/``message``/``action`` (policy).

The client leg (client>gw commands, gw>client replies) feeds the session model:
that is what the sender saw. A 354 to the client with no later gw>client reply
before ``disconnect`` is a stall.

The upstream leg is not judged here — the gateway deliberately abandons an
upstream DATA when it refuses a message or suppresses a re-sent copy — but it is
summed up per message as an :class:`UpstreamEnd` (how the server's 354 ended: its
final reply, or the gateway dropping that connection, and the policy event that
made it), so that :mod:`smtpguard.logscan.correlate` can explain the server's own
log of the same messages.

Sessions: older gateways gave their worker processes clashing session ids, so a
session is keyed by its id *and* its connect: a ``connect`` on an id that is still
open starts a new session (named ``ID#LINE`` after the line of that connect), and
an id used again after its disconnect is a new session too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from smtpguard.core.actions import Direction
from smtpguard.core.address import parse_path
from smtpguard.core.grammar import ReplyLine, parse_command, parse_reply_line

from .. import rules
from ..model import (
    ClientCommand,
    Connect,
    DataSize,
    Disconnect,
    Event,
    Flag,
    Kind,
    ServerReply,
    UpstreamEnd,
)
from ..timefmt import parse_iso
from .base import Context, Lines, RecentIds

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


# Sessions whose upstream state is kept (connect seen, disconnect not yet).
MAX_OPEN_SESSIONS = 100_000
_SERVER_TO_GW = Direction.SERVER_TO_GW.value
_GW_TO_SERVER = Direction.GW_TO_SERVER.value
SUPPRESSED_ID = "SG-DEDUPE-SUPPRESSED"
# Policy actions that do not end a transaction (docs/events.md): logged only, or
# EHLO keywords masked. Every other action, and any SG-UPSTREAM-* event, ends it.
_PASSIVE_ACTIONS = frozenset({"log", "mask", ""})


class _Up:
    """The upstream leg of one session: the message between the server's 354 and
    its end, and the envelope the gateway relayed for it."""

    __slots__ = (
        "cause",
        "client_replied",
        "data_line",
        "data_seen",
        "data_time",
        "mail_from",
        "peer",
        "rcpt_to",
    )

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []
        self.data_line = 0  # the server's 354; 0: not in DATA upstream
        self.data_time: datetime | None = None
        self.data_seen = False  # the client's end of data (a ``data`` event)
        self.client_replied = False
        self.cause: tuple[str, int, str] | None = None  # id, line, message

    def end(
        self, key: str, line: int, time: datetime | None, accepted: bool, reply: str
    ) -> UpstreamEnd:
        cause = self.cause or ("", 0, "")
        sent = self.data_seen and (not cause[0] or cause[0].startswith("SG-UPSTREAM-"))
        ev = UpstreamEnd(
            self.data_line,
            self.data_time,
            key,
            line,
            time,
            self.peer,
            self.mail_from,
            tuple(self.rcpt_to),
            accepted,
            reply,
            cause[0],
            cause[1],
            cause[2],
            sent,
            self.client_replied,
        )
        self.data_line, self.data_time = 0, None
        self.data_seen = self.client_replied = False
        self.cause = None
        return ev


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    keys: dict[str, str] = {}  # session id → the key of its current session
    ups: dict[str, _Up] = {}  # open sessions by key
    used = RecentIds()  # ids that had a session already (a reused id is a new one)
    for no, raw in lines:
        obj = _load(raw)
        if obj is None or "event" not in obj:
            if raw.strip():
                stats.unknown += 1
            continue
        sid = str(obj.get("session", ""))
        event = obj.get("event")
        ts = obj.get("ts")
        time = parse_iso(ts) if isinstance(ts, str) else None
        direction = obj.get("dir")
        if event == "connect":
            old = keys.get(sid)
            if old is not None:
                # A clashing id: which later line is whose cannot be told, so the
                # older session is left open, unjudged (no stall, no upstream end).
                ups.pop(old, None)
            session = sid if used.add(sid) else f"{sid}#{no}"
            keys[sid] = session
            peer = rules.strip_port(str(obj.get("peer", "")))
            if len(ups) >= MAX_OPEN_SESSIONS:
                del ups[next(iter(ups))]
            ups[session] = _Up(peer)
            yield Connect(no, time, session, peer)
            continue
        session = keys.get(sid, sid)
        if event == "disconnect":
            keys.pop(sid, None)
            up = ups.pop(session, None)
            if up is not None and up.data_line:
                yield up.end(session, no, time, False, "")
            yield Disconnect(no, time, session)
            continue
        up = ups.get(session)
        if event == "command":
            line = str(obj.get("line") or obj.get("verb") or "")
            cmd = parse_command(line.encode("utf-8", "surrogateescape"))
            if cmd is None:
                continue
            if direction == _CLIENT_TO_GW:
                yield ClientCommand(no, time, session, cmd)
            elif direction == _GW_TO_SERVER and up is not None:
                _upstream_command(up, cmd.verb, cmd.args)
        elif event == "reply":
            reply = _reply(obj)
            if reply is None:
                continue
            if direction == _GW_TO_CLIENT:
                if up is not None and up.data_seen and reply.last and reply.code != 354:
                    up.client_replied = True
                yield ServerReply(no, time, session, reply)
            elif direction == _SERVER_TO_GW and up is not None and reply.last:
                if up.data_line:
                    if reply.code == 220:  # a fresh upstream: the gateway dropped the last
                        yield up.end(session, no, time, False, "")
                    elif reply.code != 354:
                        final = f"{reply.code} {reply.text}".rstrip()
                        yield up.end(session, no, time, 200 <= reply.code < 300, final)
                elif reply.code == 354:
                    up.data_line, up.data_time = no, time
        elif event == "data" and direction in (_CLIENT_TO_GW, None):
            size = obj.get("size")
            if isinstance(size, int):
                if up is not None and up.data_line:
                    up.data_seen = True
                mid = obj.get("message_id")
                yield DataSize(no, time, session, size, mid if isinstance(mid, str) else "")
        elif event == "policy":
            pid = str(obj.get("id", ""))
            if up is not None and up.data_line and up.cause is None:
                action = str(obj.get("action", ""))
                # The upstream's own failures, and the lab's PIX emulation eating the
                # end of data (logged, not refused), end the leg as refusals do.
                if action not in _PASSIVE_ACTIONS or pid.startswith(
                    ("SG-UPSTREAM-", "SG-EMULATE-")
                ):
                    up.cause = (pid, no, str(obj.get("message", "")))
            if pid == SUPPRESSED_ID:
                # The gateway answered a re-sent copy itself ([dedupe], docs/events.md).
                yield Flag(no, time, session, "", Kind.SUPPRESSED, str(obj.get("message", "")))


def _upstream_command(up: _Up, verb: str, args: str) -> None:
    if verb == "MAIL":
        path = parse_path(args, "FROM")
        up.mail_from = path.mailbox if path is not None else None
        up.rcpt_to = []
    elif verb == "RCPT":
        path = parse_path(args, "TO")
        if path is not None and len(up.rcpt_to) < 1000:
            up.rcpt_to.append(path.mailbox)
    elif verb in ("HELO", "EHLO", "RSET"):
        up.mail_from, up.rcpt_to = None, []


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
