"""Postfix maillog (syslog, classic ``Feb  7 17:01:20`` or RFC 3339 stamps).

Postfix logs outcomes, not the dialogue, so this parser states findings itself:

* smtpd ``timeout after DATA (N bytes)`` / ``lost connection after DATA (N bytes)``,
  with Postfix >= 3.10's ``NOQUEUE:`` or queue-id prefix — the client got 354 and
  the session ended with no end of data: ``stalled_data`` (receiving side). The
  byte count is the proof: smtpd.c writes it only in the "DATA content" state,
  i.e. after its 354. Without it (``lost connection after DATA from …``) the DATA
  command itself failed and no 354 was sent. Postfix before 2.7 wrote the count
  after a refused DATA as well (HISTORY 2009: "log (approximately XX bytes) only if
  Postfix actually accepted the DATA command"), so a session whose connect we saw,
  whose recipients were rejected (``NOQUEUE: reject: RCPT``) and that never logged
  ``client=`` (smtpd logs it when it opens the queue file for the first accepted
  recipient; no recipient, no 354) is not a stall either;
* smtp ``... while sending end of data -- message may be sent more than once`` — we
  sent CRLF.CRLF and never got the final reply: ``stalled_data`` (sending side);
* smtp ``enabling PIX workarounds`` — the remote banner looked masked:
  ``pix_workaround``.

Deliveries for the duplicate index come from the queue-id trail: smtpd
``client=`` (receipt time and peer; ``orig_client=`` when a content filter
re-injects with XFORWARD: the copy is then the filter's hop, ``leg`` "reinjected",
grouped apart from the message as first received) ↔ cleanup ``message-id=`` ↔
qmgr ``from=, size=`` ↔ delivery agents' ``to=`` ↔ qmgr ``removed``. On the sending
side every smtp attempt that reached end of data (``status=sent`` or a stall) is one
copy. Sessions are smtpd ``connect from`` lines.

Hot path: one compiled bytes regex per line reads the stamp, daemon, pid and queue
id together; the field regexes then match in place from that offset (no slicing,
no decoding) and only on lines whose daemon and keyword can yield something. Text
is decoded only for what goes into an event. Stamps are parsed once per distinct
second. Only lines that none of the branches takes meet the "known line" regex
that tells a line we skip on purpose from one we do not understand. Pending queue
ids and open smtpd sessions are capped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

from ..model import Delivered, Event, Flag, Kind, Side
from ..timefmt import SyslogClock, parse_iso
from .base import Context, Lines

NAME = "postfix"
# Queue ids waiting for "removed"; a truncated log must not grow this forever.
MAX_PENDING_QUEUE_IDS = 100_000
# smtpd processes with an open session (connect seen, disconnect not yet).
MAX_OPEN_SESSIONS = 100_000

_STAMP = (
    rb"([A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?"
    rb"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
)
# The programs of a Postfix system as they name themselves in the log, after its
# syslog_name (postfix(1) "syslog_name"; master.cf "-o syslog_name=postfix/$service_name"
# and multi-instance names add more "/"-parts before them). Any NAME/program with one
# of these is Postfix's, whatever the NAME; a NAME that starts with "postfix" takes any.
PROGRAMS = frozenset(
    b"""anvil bounce cleanup discard dnsblog error flush lmtp local master oqmgr pickup
    pipe postdrop postfix-script postlogd postmap postmulti postqueue postscreen postsuper
    proxymap qmgr qmqpd scache sendmail showq smtp smtpd spawn tlsmgr tlsproxy
    trivial-rewrite verify virtual""".split()
)
# Possessive quantifiers: a line that is not Postfix's fails without backtracking.
# Groups: 1 stamp, 2 the program name's path ("postfix/", "mx-in/", "postfix/10025/",
# host included before it, for session keys), 3 program, 4 pid, 5 queue id.
_HEAD = re.compile(
    _STAMP + rb" (\S++ (?:[\w.-]++/)++)([\w-]++)\[(\d++)\]: "
    # Queue id: short (hex) or long (enable_long_queue_ids, base 52 without vowels).
    rb"(?:([0-9A-F]{6,}+|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}+): )?"
)
# Any other program's line in the same syslog stream (amavis, dovecot, postgrey…).
_OTHER = re.compile(_STAMP + rb" \S++ [^\s:\[]++(?:\[\d++\])?: ")
_STALL_IN = re.compile(
    rb"(?:NOQUEUE: )?(timeout|lost connection) after DATA \((\d+) bytes\) from (\S+)"
)
_STALL_IN_PREFIX = (b"timeout after DATA (", b"lost connection after DATA (")
_CLIENT = re.compile(rb"client=([^,\s]+)")
_ORIG_CLIENT = b", orig_client="
REINJECTED = "reinjected"  # the hop of a copy a content filter re-injected (XFORWARD)
_MSGID = re.compile(rb"message-id=<?([^>\s]*)>?")
_FROM = re.compile(rb"from=<([^>]*)>, size=(\d+)")
_TO = re.compile(rb"to=<([^>]*)>,(?: orig_to=<[^>]*>,)? relay=([^,\s]+).*?status=(\w+)")
_TO_RCPT = re.compile(rb"to=<([^>]*)>")
_PIX = re.compile(rb"enabling PIX workarounds: (.*?) for (\S+)")
_END_OF_DATA = b"while sending end of data -- message may be sent more than once"
# Lines this parser reads past on purpose (the shapes docs/logscan.md lists).
_KNOWN = re.compile(
    rb"(?:warning|fatal|panic|error|statistics|NOQUEUE|reject|reject_warning|milter-\w+"
    rb"|hold|discard|filter|redirect|info|replace|prepend|proxy-accept|proxy-reject"
    rb"|client|uid|message-id|resent-message-id|from|to|removed|expired"
    rb"|sender (?:non-)?delivery(?: status)? notification|enabling PIX"
    rb"|(?:dis)?connect (?:from|to)|lost connection|timeout|too many errors|improper"
    rb"|setting up TLS|(?:Anonymous|Trusted|Untrusted|Verified) TLS|SSL_\w+ error|TLS"
    rb"|host \S+ (?:said|refused)|conversation with|daemon started|terminating"
    rb"|reload|refreshing|starting|stopping|CONNECT from|DISCONNECT|PASS (?:NEW|OLD)"
    rb"|HANGUP|PREGREET|DNSBL rank|COMMAND|NON-SMTP|BARE NEWLINE|(?:WHITE|BLACK|ALLOW|DENY)"
    rb"LISTED|addr \S+ listed by|cache \S+ full cleanup|status=|sasl|postfix-script"
    rb"|mail forwarding loop|Server certificate|certificate|Connection|table|dict_\w+"
    rb"|bounce|defer|trace|verify|flush|lookup|connect to|Untrusted|Trusted)\b"
)


class _Open:
    """An smtpd session between its connect and disconnect lines."""

    __slots__ = ("client", "rejected", "start")

    def __init__(self, start: datetime | None) -> None:
        self.start = start
        self.client = False  # a client= line since the connect: a recipient was accepted
        self.rejected = False  # a recipient was rejected


class _Queued:
    __slots__ = (
        "leg",
        "line",
        "message_id",
        "peer",
        "queued",
        "rcpt_to",
        "sender",
        "session",
        "size",
        "start",
        "time",
    )

    def __init__(
        self,
        line: int,
        time: datetime | None,
        peer: str,
        session: str,
        start: datetime | None,
        leg: str = "",
    ) -> None:
        self.line, self.time, self.peer, self.session = line, time, peer, session
        self.leg = leg
        self.start = start  # the smtpd connect, if seen
        self.queued: datetime | None = None  # qmgr took it: the message was accepted
        self.message_id = ""
        self.sender: str | None = None
        self.size: int | None = None
        self.rcpt_to: list[str] = []


def sniff(lines: list[bytes]) -> int:
    score = 0
    for raw in lines:
        m = _HEAD.match(raw)
        if m is not None and _is_postfix(raw, m):
            score += 3
    return score


def _is_postfix(raw: bytes, m: re.Match[bytes]) -> bool:
    """A Postfix program, under any syslog_name (see PROGRAMS)."""
    if m.group(3) in PROGRAMS:
        return True
    return raw.startswith(b"postfix", raw.index(b" ", m.start(2)) + 1)


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _session(raw: bytes, m: re.Match[bytes]) -> str:
    """``postfix/smtpd[2117]``, ``mx-in/smtpd[2117]``: the program's full name and pid,
    as adjacent in the line (the host before them is left out)."""
    return _s(raw[raw.index(b" ", m.start(2)) + 1 : m.end(4) + 1])


def _time(clock: SyslogClock, stamp: bytes) -> datetime | None:
    if stamp[:1].isdigit():  # RFC 3339 (bytes: ASCII digits only)
        return parse_iso(stamp.decode())
    mon, day, hms = stamp.split(None, 2)
    return clock.parse(mon, day, hms)


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    clock = SyslogClock(ctx.year)
    head = _HEAD.match
    programs = PROGRAMS
    known = _KNOWN.match
    stamp_key = b"\0"  # never a prefix of a line the regex matched
    minute = b""  # the last classic stamp's minute, and its time
    minute_time: datetime | None = None
    time: datetime | None = None
    queue: dict[bytes, _Queued] = {}
    msgids: dict[bytes, str] = {}  # queue id → Message-ID, for outbound copies
    smtpd: dict[bytes, _Open] = {}  # smtpd pid → its open session
    last_stall = b""
    sessions = unknown = other = 0  # local counters, written to ctx.stats at the end
    try:
        for no, raw in lines:
            m = head(raw)
            if m is None or (m.group(3) not in programs and not _is_postfix(raw, m)):
                if _OTHER.match(raw):
                    other += 1
                elif raw.strip():
                    unknown += 1
                continue
            if not raw.startswith(stamp_key):  # the previous line's stamp
                stamp_key = raw[: m.start(2)]
                stamp = m.group(1)
                # A new second of the same minute (classic stamps): no full parse.
                if minute_time is not None and len(stamp) == 15 and stamp[:12] == minute:
                    time = minute_time.replace(second=int(stamp[13:]))
                else:
                    time = _time(clock, stamp)
                    if time is not None and stamp[:1].isalpha():
                        minute, minute_time = stamp[:12], time
                    else:
                        minute_time = None
            daemon, qid = m.group(3, 5)
            pos = m.end()
            if daemon == b"smtpd":
                # One smtpd process holds one session at a time and its pid is reused
                # only after it exits; host and program name keep instances apart.
                key = raw[m.start(2) : m.end(4)]
                if qid is None:
                    if raw.startswith(b"connect from ", pos):
                        sessions += 1
                        if len(smtpd) >= MAX_OPEN_SESSIONS:
                            del smtpd[next(iter(smtpd))]
                        smtpd[key] = _Open(time)
                        continue
                    if raw.startswith(b"disconnect from ", pos):
                        smtpd.pop(key, None)
                        continue
                    if raw.startswith(b"NOQUEUE: ", pos):
                        if raw.startswith(b"client=", pos + 9):  # before-queue filter
                            o = smtpd.get(key)
                            if o is not None:
                                o.client = True
                            continue
                        if not raw.startswith(_STALL_IN_PREFIX, pos + 9):
                            if raw.startswith(b"reject: RCPT", pos + 9):
                                o = smtpd.get(key)
                                if o is not None:
                                    o.rejected = True
                            continue
                    elif not raw.startswith(_STALL_IN_PREFIX, pos):
                        if known(raw, pos) is None:
                            unknown += 1
                        continue
                    st = _STALL_IN.match(raw, pos)
                    if st is not None:
                        o = smtpd.get(key)
                        if o is None or o.client or not o.rejected:  # (module docstring)
                            yield _stall_in(no, time, _session(raw, m), st, o.start if o else None)
                    continue
                c = _CLIENT.match(raw, pos)
                if c is not None:
                    o = smtpd.get(key)
                    if o is not None:
                        o.client = True
                    peer = c.group(1)
                    orig = raw.find(_ORIG_CLIENT, c.end())
                    leg = ""
                    if orig >= 0:
                        peer = raw[orig + len(_ORIG_CLIENT) :].split(b",", 1)[0].split()[0]
                        leg = REINJECTED
                    old = queue.pop(qid, None)
                    if old is None and len(queue) >= MAX_PENDING_QUEUE_IDS:
                        old = queue.pop(next(iter(queue)))
                    if old is not None:  # evicted, or a reused id whose "removed" is missing
                        d = _delivered(old)
                        if d is not None:
                            yield d
                    queue[qid] = _Queued(
                        no,
                        time,
                        peer.decode("utf-8", "surrogateescape"),
                        _session(raw, m),
                        o.start if o else None,
                        leg,
                    )
                elif raw.startswith(_STALL_IN_PREFIX, pos):  # Postfix >= 3.10: "<qid>: …"
                    st = _STALL_IN.match(raw, pos)
                    if st is not None:
                        o = smtpd.get(key)
                        yield _stall_in(no, time, _session(raw, m), st, o.start if o else None)
                elif known(raw, pos) is None:
                    unknown += 1
            elif qid is None:
                if daemon == b"smtp" and raw.startswith(b"enabling PIX", pos):
                    p = _PIX.match(raw, pos)
                    if p is not None:
                        yield _pix(no, time, _session(raw, m), b"", p)
                        continue
                if known(raw, pos) is None:
                    unknown += 1
            elif daemon == b"cleanup":
                mi = _MSGID.match(raw, pos)
                if mi is not None:
                    message_id = mi.group(1).decode("utf-8", "surrogateescape")
                    entry = queue.get(qid)
                    if entry is not None:
                        entry.message_id = message_id
                    if len(msgids) >= MAX_PENDING_QUEUE_IDS:
                        del msgids[next(iter(msgids))]
                    msgids[qid] = message_id
                elif known(raw, pos) is None:
                    unknown += 1
            elif daemon == b"qmgr":
                if raw.startswith(b"removed", pos):
                    msgids.pop(qid, None)
                    entry = queue.pop(qid, None)
                    if entry is not None:
                        d = _delivered(entry, time)
                        if d is not None:
                            yield d
                else:
                    entry = queue.get(qid)
                    f = _FROM.match(raw, pos)
                    if f is not None:
                        if entry is not None:
                            entry.sender, entry.size = (
                                f.group(1).decode("utf-8", "surrogateescape"),
                                int(f.group(2)),
                            )
                            entry.queued = time
                    elif known(raw, pos) is None:
                        unknown += 1
            elif raw.startswith(b"to=<", pos):
                entry = queue.get(qid)
                if daemon != b"smtp":
                    # Local, lmtp, virtual, pipe: only the recipient list of a queued entry.
                    if entry is not None:
                        t = _TO_RCPT.match(raw, pos)
                        if t is not None:
                            _add_rcpt(entry, t.group(1).decode("utf-8", "surrogateescape"))
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
                attempt = raw[m.start(2) : m.end(5)]  # b"mx postfix/smtp[2140]: 4Tq1pS2W…"
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
                    queue_id=_s(qid),
                )
            elif daemon == b"smtp" and raw.startswith(b"enabling PIX", pos):
                p = _PIX.match(raw, pos)
                if p is not None:
                    yield _pix(no, time, _session(raw, m), qid, p)
            elif known(raw, pos) is None:
                unknown += 1
        for entry in queue.values():
            d = _delivered(entry)
            if d is not None:
                yield d
    finally:
        stats.yearless_latest = clock.latest
        stats.sessions += sessions
        stats.unknown += unknown
        stats.other += other


def _add_rcpt(entry: _Queued, rcpt: str) -> None:
    if rcpt not in entry.rcpt_to and len(entry.rcpt_to) < 1000:
        entry.rcpt_to.append(rcpt)


def _stall_in(
    no: int, time: datetime | None, session: str, st: re.Match[bytes], start: datetime | None
) -> Flag:
    size = int(st.group(2))
    what = "timed out" if st.group(1) == b"timeout" else "was lost"
    if size == 0:  # a 354 and then nothing: the log proves no more than that
        detail = (
            f"the connection {what} after smtpd answered DATA with 354 and before any "
            f"message data arrived (0 bytes); the log shows nothing more"
        )
    else:
        detail = (
            f"the connection {what} in the DATA phase, after {size:,} bytes of data: the "
            f"client got 354 but its end of data (CRLF.CRLF) never arrived, as when a "
            f"filter (Mailguard) holds it back; the message was not accepted"
        )
    return Flag(no, time, session, _s(st.group(3)), Kind.STALLED_DATA, detail, start)


def _stall_out(no: int, time: datetime | None, session: str, relay: str, qid: bytes) -> Flag:
    return Flag(
        no,
        time,
        session,
        relay,
        Kind.STALLED_DATA,
        f"queue {_s(qid)}: the remote server never answered our end of data "
        f"(CRLF.CRLF) — 'message may be sent more than once': it may have been "
        f"delivered and will be sent again; what a filter that holds back the "
        f"terminator (Mailguard) causes",
        side=Side.SENDING,
    )


# What each of Postfix's PIX work-arounds does (postconf(5) smtp_pix_workarounds).
PIX_WORKAROUNDS = {
    "disable_esmtp": "disable_esmtp (it greets with HELO, not EHLO: no SIZE, PIPELINING, "
    "8BITMIME or STARTTLS on this connection)",
    "delay_dotcrlf": "delay_dotcrlf (it waits before the final CRLF.CRLF of a message "
    "queued longer than smtp_pix_workaround_threshold_time)",
}


def _pix(no: int, time: datetime | None, session: str, qid: bytes, p: re.Match[bytes]) -> Flag:
    host = _s(p.group(2))
    names = _s(p.group(1)).split()
    what = "; ".join(PIX_WORKAROUNDS.get(n, n) for n in names) or _s(p.group(1))
    return Flag(
        no,
        time,
        session,
        host,
        Kind.PIX_WORKAROUND,
        f"{f'queue {_s(qid)}: ' if qid else ''}Postfix turned on PIX work-arounds for "
        f"{host}: {what}. Postfix does so when the server's 220 greeting looks masked by "
        f"a PIX/ASA, or when smtp_pix_workaround_maps lists the server",
    )


def _delivered(entry: _Queued, removed: datetime | None = None) -> Delivered | None:
    if entry.sender is None:
        return None  # never made it to the queue manager: rejected or still in cleanup
    return Delivered(  # positional: the hot path builds one per message
        entry.line,
        entry.time,
        entry.session,
        entry.peer,
        entry.message_id,
        entry.sender,
        tuple(entry.rcpt_to),
        entry.size,
        False,
        Side.RECEIVING,
        "",
        entry.leg,
        entry.start or entry.time,
        entry.queued or removed or entry.time,
    )
