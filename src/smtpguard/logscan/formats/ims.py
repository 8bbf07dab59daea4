"""Exchange 5.5 IMS protocol log, and smtpguard's own ``ims`` protocol log.

Layout (the KB article's)::

    2/7/01 5:01:20 PM : A connection was accepted from mail.domain1.com
    2/7/01 5:01:21 PM : <<< HELO mail.domain1.com      (client → this server)
    2/7/01 5:01:21 PM : >>> 250 OK                      (this server → client)

Sessions are delimited by "A connection was accepted from"; the log has no session
id, so a session is named after the line that opened it (``@12``). A multi-line
reply is either one ``>>>`` entry per line or a ``>>> 250-...`` entry followed by
bare continuation lines; a bare line is accepted only right after a non-final reply
line, so prose pasted around a log excerpt is skipped, not parsed (and
counted as not understood). ``<<< IO: |…`` lines are the service's raw echo of
what the client sent; the ``<<<`` line after it is the command.

smtpguard's mailbox (``smtpguard sink --log``) adds one entry per stored message,
``message data: N bytes, Message-ID <id>``, read as the message's size and
identity (IMS itself logged neither).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from smtpguard.core.grammar import parse_command, parse_reply_line
from smtpguard.logs import IMS_FROM_CLIENT, IMS_TO_CLIENT

from ..model import ClientCommand, Connect, DataSize, Disconnect, Event, ServerReply
from ..timefmt import parse_ims
from .base import Context, Lines

NAME = "ims"

_ENTRY = re.compile(
    rb"\s*(\d{1,2}/\d{1,2}/\d{2,4}) (\d{1,2}:\d{2}:\d{2}) ([AaPp][Mm]) : (.*?)\r?\n?\Z",
    re.DOTALL,
)
_FROM_CLIENT = IMS_FROM_CLIENT.encode() + b" "  # the writer's marks (smtpguard.logs)
_TO_CLIENT = IMS_TO_CLIENT.encode() + b" "
_ACCEPTED = b"A connection was accepted from "
_CLOSED = (b"The connection was closed", b"Connection closed", b"Disconnected")
# The mailbox's entry for a stored message (sink/lab.py message_note).
_STORED = re.compile(rb"message data: (\d{1,15}) bytes(?:, Message-ID <([^<>]{1,998})>)?\Z")


def sniff(lines: list[bytes]) -> int:
    return sum(5 for raw in lines if _ENTRY.match(raw))


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    session = ""
    continuation = False  # the previous entry was a non-final reply line
    last_time = None
    for no, raw in lines:
        m = _ENTRY.match(raw)
        if m is None:
            if continuation and session:
                body = raw.strip()
                r = parse_reply_line(body)
                if r is not None:
                    continuation = not r.last
                    yield ServerReply(no, last_time, session, r)
                    continue
            continuation = False
            if raw.strip():
                stats.unknown += 1
            continue
        time = parse_ims(m.group(1).decode(), m.group(2).decode(), m.group(3).decode())
        last_time = time
        body = m.group(4)
        continuation = False
        if body.startswith(_ACCEPTED):
            if session:  # no interleaving in this format: a new connection ends the last
                yield Disconnect(no, time, session)
            session = f"@{no}"
            peer = body[len(_ACCEPTED) :].strip().decode("utf-8", "surrogateescape")
            yield Connect(no, time, session, peer)
        elif not session or body.startswith(_FROM_CLIENT + b"IO: "):  # IO: the raw echo
            continue
        elif body.startswith(_FROM_CLIENT):
            cmd = parse_command(body[len(_FROM_CLIENT) :])
            if cmd is not None:
                yield ClientCommand(no, time, session, cmd)
        elif body.startswith(_TO_CLIENT):
            r = parse_reply_line(body[len(_TO_CLIENT) :])
            if r is not None:
                continuation = not r.last
                yield ServerReply(no, time, session, r)
        elif body.startswith(_CLOSED):
            yield Disconnect(no, time, session)
            session = ""
        elif (stored := _STORED.match(body)) is not None:
            mid = stored.group(2)
            yield DataSize(
                no,
                time,
                session,
                int(stored.group(1)),
                mid.decode("utf-8", "replace") if mid else "",
            )
