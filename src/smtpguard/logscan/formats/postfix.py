"""Postfix maillog (syslog, classic ``Feb  7 17:01:20`` or RFC 3339 stamps).

Postfix logs outcomes, not the dialogue, so this parser states findings itself:

* smtpd ``timeout after DATA`` / ``lost connection after DATA`` — the client got 354
  and the session ended with no end of data: ``stalled_data`` (receiving side);
* smtp ``... while sending end of data -- message may be sent more than once`` — we
  sent CRLF.CRLF and never got the final reply: ``stalled_data`` (sending side);
* smtp ``enabling PIX workarounds`` — the remote banner looked masked:
  ``pix_workaround``.

Deliveries for the duplicate index come from the queue-id trail: smtpd
``client=`` (receipt time and peer) ↔ cleanup ``message-id=`` ↔ qmgr ``from=, size=``
↔ delivery agents' ``to=`` ↔ qmgr ``removed``. On the sending side every smtp
attempt that reached end of data (``status=sent`` or a stall) is one copy.

Hot path: one compiled bytes regex per line and a dispatch on the daemon name;
stamps are parsed once per distinct second. Pending queue ids are capped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

from ..model import Delivered, Event, Flag, Kind, Side
from ..timefmt import SyslogClock, parse_iso
from . import Context, Lines

NAME = "postfix"
# Queue ids waiting for "removed"; a truncated log must not grow this forever.
MAX_PENDING_QUEUE_IDS = 100_000

_HEAD = re.compile(
    rb"(?:([A-Z][a-z]{2}) +(\d{1,2}) (\d\d:\d\d:\d\d)(?:\.\d+)?"
    rb"|(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?))"
    rb" \S+ postfix[\w.-]*/(?:[\w.-]+/)?([\w-]+)\[(\d+)\]: "
)
_QID = re.compile(rb"([0-9A-F]{6,}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}): ")
_STALL_IN = re.compile(rb"(timeout|lost connection) after DATA(?: \((\d+) bytes\))? from (\S+)")
_CONNECT = re.compile(rb"connect from (\S+)")
_CLIENT = re.compile(rb"client=([^,\s]+)")
_MSGID = re.compile(rb"message-id=<?([^>\s]*)>?")
_FROM = re.compile(rb"from=<([^>]*)>, size=(\d+)")
_TO = re.compile(rb"to=<([^>]*)>,(?: orig_to=<[^>]*>,)? relay=([^,\s]+).*?status=(\w+)")
_PIX = re.compile(rb"enabling PIX workarounds: (.*?) for (\S+)")
_END_OF_DATA = b"while sending end of data -- message may be sent more than once"


class _Queued:
    __slots__ = ("line", "message_id", "peer", "rcpt_to", "sender", "session", "size", "time")

    def __init__(self, line: int, time: datetime | None, peer: str, session: str) -> None:
        self.line, self.time, self.peer, self.session = line, time, peer, session
        self.message_id = ""
        self.sender: str | None = None
        self.size: int | None = None
        self.rcpt_to: list[str] = []


def sniff(lines: list[bytes]) -> int:
    return sum(3 for raw in lines if _HEAD.match(raw))


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    clock = SyslogClock(ctx.year)
    stamp_key = b""
    time: datetime | None = None
    queue: dict[bytes, _Queued] = {}
    msgids: dict[bytes, str] = {}  # queue id → Message-ID, for outbound copies
    last_stall = b""
    for no, raw in lines:
        m = _HEAD.match(raw)
        if m is None:
            continue
        key = raw[: m.start(5)]
        if key != stamp_key:
            stamp_key = key
            if m.group(4):
                time = parse_iso(m.group(4).decode())
            else:
                time = clock.parse(m.group(1).decode(), m.group(2).decode(), m.group(3).decode())
        daemon = m.group(5)
        msg = raw[m.end() :].rstrip(b"\r\n")
        session = f"{_s(daemon)}[{_s(m.group(6))}]"
        q = _QID.match(msg)
        if q is None:
            if daemon == b"smtpd":
                s = _STALL_IN.match(msg)
                if s is not None:
                    got = f", after {int(s.group(2)):,} bytes of data" if s.group(2) else ""
                    what = "timed out" if s.group(1) == b"timeout" else "was lost"
                    yield Flag(
                        no,
                        time,
                        session,
                        _s(s.group(3)),
                        Kind.STALLED_DATA,
                        f"the connection {what} in the DATA phase{got}: the client "
                        f"got 354 but its end of data (CRLF.CRLF) never arrived — the "
                        f"Mailguard signature; the sender will retry",
                    )
            continue
        qid = q.group(1)
        rest = msg[q.end() :]
        if daemon == b"smtpd":
            c = _CLIENT.match(rest)
            if c is not None:
                if len(queue) >= MAX_PENDING_QUEUE_IDS:
                    oldest = next(iter(queue))
                    yield from _emit(queue.pop(oldest))
                queue[qid] = _Queued(no, time, _s(c.group(1)), session)
        elif daemon == b"cleanup":
            mi = _MSGID.match(rest)
            if mi is not None:
                entry = queue.get(qid)
                if entry is not None:
                    entry.message_id = _s(mi.group(1))
                if len(msgids) >= MAX_PENDING_QUEUE_IDS:
                    del msgids[next(iter(msgids))]
                msgids[qid] = _s(mi.group(1))
        elif daemon == b"qmgr":
            if rest.startswith(b"removed"):
                msgids.pop(qid, None)
                entry = queue.pop(qid, None)
                if entry is not None:
                    yield from _emit(entry)
            else:
                f = _FROM.match(rest)
                entry = queue.get(qid)
                if f is not None and entry is not None:
                    entry.sender, entry.size = _s(f.group(1)), int(f.group(2))
        elif rest.startswith(b"to=<"):
            t = _TO.match(rest)
            if t is None:
                continue
            rcpt, relay, status = _s(t.group(1)), _s(t.group(2)), t.group(3)
            entry = queue.get(qid)
            if entry is not None and rcpt not in entry.rcpt_to and len(entry.rcpt_to) < 1000:
                entry.rcpt_to.append(rcpt)
            if daemon != b"smtp":
                continue
            stalled = _END_OF_DATA in rest
            attempt = qid + session.encode()
            if stalled and attempt != last_stall:  # one finding per attempt, not per rcpt
                last_stall = attempt
                yield Flag(
                    no,
                    time,
                    session,
                    relay,
                    Kind.STALLED_DATA,
                    f"queue {_s(qid)}: the remote server never answered our end of "
                    f"data (CRLF.CRLF) — 'message may be sent more than once'; a "
                    f"filter in the path is eating the terminator (Mailguard "
                    f"signature)",
                )
            if stalled or status == b"sent":
                yield Delivered(
                    no,
                    time,
                    session,
                    relay,
                    message_id=msgids.get(qid, ""),
                    rcpt_to=(rcpt,),
                    stalled=stalled,
                    side=Side.SENDING,
                )
        elif daemon == b"smtp":
            p = _PIX.match(rest)
            if p is not None:
                yield Flag(
                    no,
                    time,
                    session,
                    _s(p.group(2)),
                    Kind.PIX_WORKAROUND,
                    f"queue {_s(qid)}: Postfix switched on its PIX work-arounds "
                    f"({_s(p.group(1))}) because {_s(p.group(2))} greeted with a "
                    f"masked banner; each message now ends with a delay before "
                    f"CRLF.CRLF",
                )
    for entry in queue.values():
        yield from _emit(entry)


def _emit(entry: _Queued) -> Iterator[Delivered]:
    if entry.sender is None:
        return  # never made it to the queue manager: rejected or still in cleanup
    yield Delivered(
        entry.line,
        entry.time,
        entry.session,
        entry.peer,
        message_id=entry.message_id,
        mail_from=entry.sender,
        rcpt_to=tuple(entry.rcpt_to),
        size=entry.size,
    )
