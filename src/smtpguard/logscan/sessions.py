"""Replays dialogue events through one SMTP state machine per session.

Theory of operation: a session is opened by :class:`Connect` (or by the first event
that names it) and closed by :class:`Disconnect`, by a new ``Connect`` with the same
id, or by the end of the input. Replies are matched to commands in order (a queue
of verbs awaiting an answer, RFC 5321 §4.2 with pipelining, RFC 2920). A final 354
puts the session in *data* state; the next final reply ends the transaction. A
session that closes while still in data state is a ``stalled_data`` finding: the
server never answered the end of data — exactly what Mailguard did when CRLF.CRLF
was split across segments. A command whose verb is only ``X``s (``XXXX``) answered
500 is the command a PIX/ASA overwrote because it does not allow it (EHLO, AUTH,
STARTTLS…): ``pix_rewrite``, once per session.

Only *open* sessions are kept; closing one frees it, so memory is bounded by the
number of concurrent sessions in the log, not by its size. A session left in data
state when the input ends is not reported (a live or truncated log looks the same),
it is only counted.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from datetime import datetime

from smtpguard.core.address import parse_path
from smtpguard.core.checks import size_param

from . import rules
from .model import (
    ClientCommand,
    Connect,
    Copy,
    DataSize,
    Delivered,
    Disconnect,
    Event,
    Finding,
    Kind,
    ServerReply,
    Side,
)

# Queue of unanswered commands; a log that lost replies must not grow it forever.
MAX_PENDING = 128
# Lines of a multi-line greeting kept for the banner check.
MAX_BANNER_LINES = 20
# PIX 7.x / ASA overwrite a command they do not allow with as many X as it has
# letters (6.x: with NOOP, which a log cannot tell from a real NOOP).
_REWRITTEN = re.compile(r"X{4,}")

Output = Finding | Delivered


class _Session:
    __slots__ = (
        "banner",
        "banner_done",
        "data_line",
        "data_time",
        "ehlo_flagged",
        "mail_from",
        "message_id",
        "peer",
        "pending",
        "pix_flagged",
        "rcpt_to",
        "sid",
        "side",
        "size",
        "start",
        "suppressed",
    )

    def __init__(self, sid: str, peer: str, side: Side, start: datetime | None) -> None:
        self.sid = sid
        self.peer = peer
        self.side = side
        self.start = start
        self.pix_flagged = False
        self.pending: deque[tuple[str, str]] = deque(maxlen=MAX_PENDING)
        self.banner: list[str] = []
        self.banner_done = False
        self.ehlo_flagged = False
        self.data_line = 0
        self.data_time: datetime | None = None
        self.reset()

    def reset(self) -> None:
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []
        self.size: int | None = None
        self.message_id = ""
        self.data_line = 0
        self.data_time = None
        self.suppressed = False


class SessionTracker:
    """Feed dialogue events of one file; yields findings and delivered copies.

    ``leg`` marks the copies of a log written at another hop than the servers' own
    (smtpguard's ``jsonl``: ``"gateway"``), so that one copy seen by the gateway and
    by the server behind it is not taken for two (see :class:`Delivered`)."""

    def __init__(self, file: str, leg: str = "") -> None:
        self.file = file
        self.leg = leg
        self._open: dict[str, _Session] = {}
        self.sessions_seen = 0
        self.open_in_data_at_end = 0

    def feed(self, ev: Event) -> Iterator[Output]:
        if isinstance(ev, Connect):
            old = self._open.pop(ev.session, None)
            if old is not None:
                yield from self._close(old, ev.line, ev.time)
            self._open[ev.session] = _Session(ev.session, ev.peer, ev.side, ev.time)
            self.sessions_seen += 1
        elif isinstance(ev, Disconnect):
            s = self._open.pop(ev.session, None)
            if s is not None:
                yield from self._close(s, ev.line, ev.time)
        elif isinstance(ev, ClientCommand):
            self._command(self._get(ev.session, ev.time), ev)
        elif isinstance(ev, ServerReply):
            greeting = ev.reply.code == 220 and ev.session not in self._open
            s = self._get(ev.session, ev.time)
            if greeting:  # a log that starts at the greeting has no connect line
                s.banner_done = False
            yield from self._reply(s, ev)
        elif isinstance(ev, DataSize):
            s = self._get(ev.session, ev.time)
            s.size = ev.size
            if ev.message_id:
                s.message_id = ev.message_id

    def suppress(self, sid: str) -> None:
        """The gateway answered this session's message itself ([dedupe]): the 250 the
        client gets is not a delivery (the ``suppressed_copy`` finding tells it)."""
        s = self._open.get(sid)
        if s is not None:
            s.suppressed = True

    def close(self) -> Iterator[Output]:
        """End of input: forget open sessions, counting those stuck in data."""
        for s in self._open.values():
            if s.data_time is not None or s.data_line:
                self.open_in_data_at_end += 1
        self._open.clear()
        return iter(())

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    def _get(self, sid: str, time: datetime | None) -> _Session:
        s = self._open.get(sid)
        if s is None:  # log started mid-session, or the format has no connect line
            s = self._open[sid] = _Session(sid, "", Side.RECEIVING, time)
            s.banner_done = True
            self.sessions_seen += 1
        return s

    def _command(self, s: _Session, ev: ClientCommand) -> None:
        verb, args = ev.command.verb, ev.command.args
        s.pending.append((verb, args))
        s.banner_done = True
        if verb == "MAIL":
            s.reset()
            path = parse_path(args, "FROM")
            if path is not None:
                s.mail_from = path.mailbox
                s.size = size_param(path.params)
        elif verb in ("HELO", "EHLO", "RSET"):
            s.reset()

    def _reply(self, s: _Session, ev: ServerReply) -> Iterator[Output]:
        r = ev.reply
        if not s.banner_done:
            if len(s.banner) < MAX_BANNER_LINES:
                s.banner.append(f"{r.code}{' ' if r.last else '-'}{r.text}")
            if r.last:
                s.banner_done = True
                if r.code == 220 and rules.is_masked_banner(s.banner):
                    yield self._finding(Kind.MASKED_BANNER, ev, s, _banner_detail(s))
            return
        if not r.last:
            return
        if s.data_line:
            yield from self._end_of_data(s, ev)
            return
        verb, args = s.pending.popleft() if s.pending else ("", "")
        if r.code == 354:
            s.data_line, s.data_time = ev.line, ev.time
        elif verb == "EHLO" and r.code in rules.EHLO_REJECT_CODES and not s.ehlo_flagged:
            s.ehlo_flagged = True
            yield self._finding(Kind.EHLO_REJECTED, ev, s, _ehlo_detail(s, r.code, r.text))
        elif r.code in rules.EHLO_REJECT_CODES and not s.pix_flagged and _REWRITTEN.fullmatch(verb):
            s.pix_flagged = True
            yield self._finding(Kind.PIX_REWRITE, ev, s, _rewrite_detail(verb, args))
        elif verb == "RCPT" and 200 <= r.code < 300:
            path = parse_path(args, "TO")
            if path is not None:
                s.rcpt_to.append(path.mailbox)

    def _end_of_data(self, s: _Session, ev: ServerReply) -> Iterator[Output]:
        r = ev.reply
        if 200 <= r.code < 300 and not s.suppressed:
            yield Delivered(
                line=s.data_line,
                time=s.data_time,
                session=s.sid,
                peer=s.peer,
                message_id=s.message_id or rules.angle_id(r.text),
                mail_from=s.mail_from,
                rcpt_to=tuple(s.rcpt_to),
                size=s.size,
                leg=self.leg,
                start=s.start,
                end=ev.time,
            )
        s.reset()

    def _close(self, s: _Session, line: int, time: datetime | None) -> Iterator[Output]:
        if not s.data_line:
            return
        when = f" at {time:%Y-%m-%d %H:%M:%S}" if time else ""
        if s.side is Side.SENDING:
            detail = (
                f"we sent the message data after a 354 reply, but the remote server never "
                f"gave a final reply before the session ended{when} (line {line}); the "
                f"end-of-data CRLF.CRLF was lost on the way (Mailguard signature) — the "
                f"message was probably delivered anyway and will be sent again"
            )
        else:
            detail = (
                f"354 was sent for DATA, but no final reply followed before the session "
                f"ended{when} (line {line}); the end-of-data CRLF.CRLF never got an "
                f"answer (Mailguard signature) — the sender times out and re-sends"
            )
        yield Finding(
            Kind.STALLED_DATA,
            self.file,
            s.data_line,
            s.data_time,
            s.peer,
            s.sid,
            detail,
            (Copy(self.file, s.data_line, s.data_time, s.peer, True, s.start, time),),
            s.start,
            s.mail_from,
        )
        if s.mail_from is not None or s.rcpt_to or s.message_id:
            yield Delivered(
                line=s.data_line,
                time=s.data_time,
                session=s.sid,
                peer=s.peer,
                message_id=s.message_id,
                mail_from=s.mail_from,
                rcpt_to=tuple(s.rcpt_to),
                size=s.size,
                stalled=True,
                leg=self.leg,
                start=s.start,
                end=time,
            )
        s.reset()

    def _finding(self, kind: Kind, ev: ServerReply, s: _Session, detail: str) -> Finding:
        return Finding(kind, self.file, ev.line, ev.time, s.peer, s.sid, detail, (), s.start)


def _banner_detail(s: _Session) -> str:
    shown = " / ".join(line.rstrip() for line in s.banner)[:120]
    who = "the remote server's" if s.side is Side.SENDING else "the"
    if rules.pix_greeting(s.banner):
        return (
            f"{who} 220 greeting looks like a PIX mask ({shown!r}): a PIX/ASA Mailguard-style "
            f"filter rewrites it, and Postfix senders switch on their slow PIX work-arounds"
        )
    return (
        f"{who} 220 greeting is partly masked with asterisks ({shown!r}): a filter in the "
        f"path rewrites it (ASA 'mask-banner' or similar)"
    )


def _ehlo_detail(s: _Session, code: int, text: str) -> str:
    return (
        f"EHLO was answered {code} {text.strip()!r}: ESMTP is filtered on this path "
        f"(Mailguard 'fixup protocol smtp' behaviour); clients fall back to HELO and "
        f"lose SIZE, 8BITMIME, PIPELINING and STARTTLS"
    )


def _rewrite_detail(verb: str, args: str) -> str:
    what = f" (its argument {args!r} survived)" if args else ""
    return (
        f"the client's command reached the server as {verb!r}{what} and was refused 500: "
        f"a PIX/ASA Mailguard-style filter overwrote a command it does not allow (EHLO "
        f"as XXXX is the KB article's signature); the client falls back to HELO and "
        f"loses SIZE, 8BITMIME, PIPELINING and STARTTLS"
    )
