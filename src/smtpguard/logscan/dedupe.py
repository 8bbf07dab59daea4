"""Duplicate deliveries: the same message accepted more than once within a window.

Theory of operation: every :class:`Delivered` copy gets an identity key —
Message-ID plus recipients when the log gives a Message-ID, else sender +
recipients + size. A log that gives neither Message-ID nor size (Exchange 5.5 IMS)
only links copies when one of them stalled: the same envelope re-sent after a stall
is the Mailguard retry pattern, while two ordinary messages between the same two
people are not evidence of anything.

A group starts at its first copy and collects every copy that arrives within
``window`` of it. Groups live in an insertion-ordered dict keyed by a 16-byte
digest; a group is flushed (and reported if it holds two or more copies) as soon as
the newest time seen is past its window, or when the index is full. Memory is thus
bounded by ``max_groups`` whatever the size of the log.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta

from . import rules
from .model import Copy, Delivered, Finding, Kind, Side
from .timefmt import human_delta

DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_MAX_GROUPS = 200_000
# Copies kept per group for the report; the count goes on past it.
MAX_COPIES = 50


class _Group:
    __slots__ = ("copies", "count", "desc", "first", "session", "stalled")

    def __init__(self, first: datetime, desc: str, session: str) -> None:
        self.first = first
        self.desc = desc
        self.session = session
        self.copies: list[Copy] = []
        self.count = 0
        self.stalled = 0


class DuplicateIndex:
    def __init__(
        self, window: timedelta = DEFAULT_WINDOW, max_groups: int = DEFAULT_MAX_GROUPS
    ) -> None:
        self.window = window
        self.max_groups = max_groups
        self._groups: dict[bytes, _Group] = {}
        self._now: datetime | None = None
        self.deliveries = 0
        self.evicted_early = 0

    def add(self, file: str, d: Delivered) -> Iterator[Finding]:
        if d.time is None or rules.is_loopback(d.peer):
            return
        self.deliveries += 1
        if self._now is None or d.time > self._now:
            self._now = d.time
            yield from self._expire()
        key, desc, weak = _identity(d)
        if key is None:
            return
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()
        g = self._groups.get(digest)
        if g is not None and d.time - g.first > self.window:
            del self._groups[digest]
            yield from self._report(g)
            g = None
        if g is None:
            if len(self._groups) >= self.max_groups:
                oldest = next(iter(self._groups))
                self.evicted_early += 1
                yield from self._report(self._groups.pop(oldest))
            g = self._groups[digest] = _Group(d.time, desc, d.session)
            if weak:
                g.desc = "weak:" + desc
        g.count += 1
        g.stalled += d.stalled
        if len(g.copies) < MAX_COPIES:
            g.copies.append(Copy(file, d.line, d.time, d.peer))

    def close(self) -> Iterator[Finding]:
        groups, self._groups = self._groups, {}
        for g in groups.values():
            yield from self._report(g)

    @property
    def size(self) -> int:
        return len(self._groups)

    def _expire(self) -> Iterator[Finding]:
        assert self._now is not None
        limit = self._now - self.window
        while self._groups:
            digest = next(iter(self._groups))
            g = self._groups[digest]
            if g.first >= limit:
                break
            del self._groups[digest]
            yield from self._report(g)

    def _report(self, g: _Group) -> Iterator[Finding]:
        if g.count < 2:
            return
        desc = g.desc
        if desc.startswith("weak:"):
            if not g.stalled:
                return
            desc = desc[5:]
        first = g.copies[0]
        parts = []
        prev: datetime | None = None
        for c in g.copies:
            when = f"{c.time:%Y-%m-%d %H:%M:%S}" if c.time else "?"
            gap = f" ({human_delta(c.time - prev)})" if prev and c.time else ""
            parts.append(f"{when}{gap} {c.file}:{c.line}")
            prev = c.time
        more = f" and {g.count - len(g.copies)} more" if g.count > len(g.copies) else ""
        stalled = f", {g.stalled} of them without a final reply" if g.stalled else ""
        hint = _interval_hint(g.copies, g.stalled)
        detail = (
            f"{desc} was delivered {g.count} times within the window{stalled}: "
            f"{'; '.join(parts)}{more}.{hint}"
        )
        peers = sorted({c.peer for c in g.copies if c.peer})
        yield Finding(
            Kind.DUPLICATE,
            first.file,
            first.line,
            first.time,
            ", ".join(peers),
            g.session,
            detail,
            tuple(g.copies),
        )


def _identity(d: Delivered) -> tuple[str | None, str, bool]:
    rcpts = ",".join(sorted(r.lower() for r in d.rcpt_to))
    to = f" to {', '.join(d.rcpt_to)}" if d.rcpt_to else ""
    sender = f" from <{d.mail_from}>" if d.mail_from or d.rcpt_to else ""
    if d.side is Side.SENDING:  # copies we sent never pair with copies we received
        rcpts = f"{rcpts}\0sent"
    if d.message_id:
        return f"m\0{d.message_id}\0{rcpts}", f"Message <{d.message_id}>{sender}{to}", False
    if not d.mail_from and not rcpts:
        return None, "", False
    if d.size is not None:
        desc = f"A message{sender}{to} ({d.size} bytes)"
        return f"e\0{d.mail_from.lower()}\0{rcpts}\0{d.size}", desc, False
    return f"w\0{d.mail_from.lower()}\0{rcpts}", f"A message{sender}{to}", True


def _interval_hint(copies: list[Copy], stalled: int) -> str:
    times = [c.time for c in copies if c.time]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    if len(gaps) >= 2 and min(gaps) > 0 and max(gaps) <= 1.25 * min(gaps):
        return " The intervals are regular: the sender is retrying, it never saw a final reply."
    if stalled:
        return " A copy whose end of data got no reply, then another copy: a sender retry."
    return ""
