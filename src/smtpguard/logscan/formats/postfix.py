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

Hot path: one compiled bytes regex per line reads the stamp, daemon, pid and queue
id together; the field regexes then match in place from that offset (no slicing,
no decoding) and only on lines whose daemon and keyword can yield something. Text
is decoded only for what goes into an event. Stamps are parsed once per distinct
second. Pending queue ids are capped.
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

# Possessive quantifiers: a line that is not Postfix's fails without backtracking.
_HEAD = re.compile(
    rb"([A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?"
    rb"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    rb" \S++ postfix[\w.-]*+/(?:[\w.-]++/)?([\w-]++)\[(\d++)\]: "
    # Queue id: short (hex) or long (enable_long_queue_ids, base 52 without vowels).
    rb"(?:([0-9A-F]{6,}+|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}+): )?"
)
_STALL_IN = re.compile(rb"(timeout|lost connection) after DATA(?: \((\d+) bytes\))? from (\S+)")
_STALL_IN_PREFIX = (b"timeout after DATA", b"lost connection after DATA")
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


def _session(raw: bytes, m: re.Match[bytes]) -> str:
    """``smtpd[2117]``: daemon and pid are adjacent in the line."""
    return _s(raw[m.start(2) : m.end(3) + 1])


def _time(clock: SyslogClock, stamp: bytes) -> datetime | None:
    if stamp[:1].isdigit():  # RFC 3339
        return parse_iso(stamp.decode())
    mon, day, hms = stamp.split(None, 2)
    return clock.parse(mon, day, hms)


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    clock = SyslogClock(ctx.year)
    head = _HEAD.match
    stamp_key = b"\0"  # never a prefix of a line the regex matched
    time: datetime | None = None
    queue: dict[bytes, _Queued] = {}
    msgids: dict[bytes, str] = {}  # queue id → Message-ID, for outbound copies
    last_stall = b""
    for no, raw in lines:
        m = head(raw)
        if m is None:
            continue
        if not raw.startswith(stamp_key):  # the previous line's stamp and host
            stamp_key = raw[: m.start(2)]
            time = _time(clock, m.group(1))
        daemon, qid = m.group(2, 4)
        pos = m.end()
        if qid is None:
            if daemon == b"smtpd" and raw.startswith(_STALL_IN_PREFIX, pos):
                st = _STALL_IN.match(raw, pos)
                if st is not None:
                    yield _stall_in(no, time, _session(raw, m), st)
            continue
        if daemon == b"smtpd":
            c = _CLIENT.match(raw, pos)
            if c is not None:
                old = queue.pop(qid, None)
                if old is None and len(queue) >= MAX_PENDING_QUEUE_IDS:
                    old = queue.pop(next(iter(queue)))
                if old is not None:  # evicted, or a reused id whose "removed" is missing
                    d = _delivered(old)
                    if d is not None:
                        yield d
                queue[qid] = _Queued(no, time, _s(c.group(1)), _session(raw, m))
        elif daemon == b"cleanup":
            mi = _MSGID.match(raw, pos)
            if mi is not None:
                message_id = _s(mi.group(1))
                entry = queue.get(qid)
                if entry is not None:
                    entry.message_id = message_id
                if len(msgids) >= MAX_PENDING_QUEUE_IDS:
                    del msgids[next(iter(msgids))]
                msgids[qid] = message_id
        elif daemon == b"qmgr":
            if raw.startswith(b"removed", pos):
                msgids.pop(qid, None)
                entry = queue.pop(qid, None)
                if entry is not None:
                    d = _delivered(entry)
                    if d is not None:
                        yield d
            else:
                entry = queue.get(qid)
                if entry is not None:
                    f = _FROM.match(raw, pos)
                    if f is not None:
                        entry.sender, entry.size = _s(f.group(1)), int(f.group(2))
        elif raw.startswith(b"to=<", pos):
            entry = queue.get(qid)
            if daemon != b"smtp":
                # Local, lmtp, virtual, pipe: only the recipient list of a queued entry.
                if entry is not None:
                    t = _TO.match(raw, pos)
                    if t is not None:
                        _add_rcpt(entry, _s(t.group(1)))
                continue
            t = _TO.match(raw, pos)
            if t is None:
                continue
            rcpt, status = _s(t.group(1)), t.group(3)
            if entry is not None:
                _add_rcpt(entry, rcpt)
            stalled = raw.find(_END_OF_DATA, pos) >= 0
            if not stalled and status != b"sent":
                continue
            session, relay = _session(raw, m), _s(t.group(2))
            attempt = raw[m.start(2) : m.end(4)]  # b"smtp[2140]: 4Tq1pS2Wb0z9rKD"
            if stalled and attempt != last_stall:  # one finding per attempt, not per rcpt
                last_stall = attempt
                yield _stall_out(no, time, session, relay, qid)
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
        elif daemon == b"smtp" and raw.startswith(b"enabling PIX", pos):
            p = _PIX.match(raw, pos)
            if p is not None:
                yield _pix(no, time, _session(raw, m), qid, p)
    for entry in queue.values():
        d = _delivered(entry)
        if d is not None:
            yield d


def _add_rcpt(entry: _Queued, rcpt: str) -> None:
    if rcpt not in entry.rcpt_to and len(entry.rcpt_to) < 1000:
        entry.rcpt_to.append(rcpt)


def _stall_in(no: int, time: datetime | None, session: str, st: re.Match[bytes]) -> Flag:
    got = f", after {int(st.group(2)):,} bytes of data" if st.group(2) else ""
    what = "timed out" if st.group(1) == b"timeout" else "was lost"
    return Flag(
        no,
        time,
        session,
        _s(st.group(3)),
        Kind.STALLED_DATA,
        f"the connection {what} in the DATA phase{got}: the client "
        f"got 354 but its end of data (CRLF.CRLF) never arrived — the "
        f"Mailguard signature; the sender will retry",
    )


def _stall_out(no: int, time: datetime | None, session: str, relay: str, qid: bytes) -> Flag:
    return Flag(
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


def _pix(no: int, time: datetime | None, session: str, qid: bytes, p: re.Match[bytes]) -> Flag:
    return Flag(
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


def _delivered(entry: _Queued) -> Delivered | None:
    if entry.sender is None:
        return None  # never made it to the queue manager: rejected or still in cleanup
    return Delivered(
        entry.line,
        entry.time,
        entry.session,
        entry.peer,
        message_id=entry.message_id,
        mail_from=entry.sender,
        rcpt_to=tuple(entry.rcpt_to),
        size=entry.size,
    )
