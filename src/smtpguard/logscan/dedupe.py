"""Duplicate deliveries: the same message accepted more than once within a window.

Theory of operation: every :class:`Delivered` copy gets an identity key —
Message-ID plus recipients when the log gives a Message-ID, a sending MTA's queue
file plus recipients, else sender + recipients (+ size when the log gives it). The
last is *weak*: it only links copies when one of them stalled. The same envelope
re-sent after a stall is the Mailguard retry pattern, while two ordinary messages
between the same two people, even of one size (a daily report), are not evidence
of anything.

A group starts at its first copy and collects every copy that lies within
``window`` of it, before or after (a log pasted newest first is read as well as one
in time order; the report lists the copies in time order). Groups live in a dict
keyed by the copies' identity string (exact: no digest to collide, and no hashing
cost on every delivery), and in a deque in the order they were opened; a group is
flushed (and reported if it holds two or more copies) as soon as the newest time
seen is past its window, or when the index is full. Memory is thus bounded by
``max_groups`` whatever the size of the log.

Every delivery goes through :meth:`DuplicateIndex.add` and almost none is a
duplicate, so the descriptive text and the :class:`Copy` records are only built
when a group is reported.

Loopback: nothing is set aside for its address alone (a server behind a gateway
without XCLIENT sees every client as 127.0.0.1, and a sender whose relay host is a
gateway on loopback sends every copy there; both must still find duplicates). A
content filter is recognised by what it does: the same log shows the message (same
Message-ID) *sent* to a relay on loopback and *received* back from loopback — the
filter's hand-off (Postfix ``relay=127.0.0.1[127.0.0.1]:10024``) and its
re-injection (Postfix's second smtpd on 127.0.0.1:10025). Only such pairs are set
aside, counted by reason in :attr:`DuplicateIndex.set_aside`:

* ``loopback_relay``: a copy sent to loopback whose message came back from loopback;
* ``content_filter_reinjection``: a copy received from loopback of a message that
  was handed to loopback, one per hand-off.

Both are decided when the group is flushed, so hand-off and re-injection may be
logged in either order. A copy sent to loopback that never comes back (a relay
host on loopback: a local gateway) is a copy like any other.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from . import rules
from .formats.postfix import REINJECTED
from .model import Copy, Delivered, Finding, Kind, Side
from .timefmt import human_delta

DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_MAX_GROUPS = 200_000
# Copies kept per group for the report; the count goes on past it.
MAX_COPIES = 50
MAX_PEERS_CACHED = 10_000
# Messages remembered as handed to a loopback relay (content filter), oldest forgotten.
MAX_HANDOFFS = 200_000
LOOPBACK_RELAY = "loopback_relay"
REINJECTION = "content_filter_reinjection"
_NONE: tuple[Finding, ...] = ()
_SENDING = Side.SENDING


# file, line, time, peer, stalled, session start, session end
_CopyAt = tuple[str, int, datetime, str, bool, datetime | None, datetime | None]


class _Group:
    __slots__ = (
        "count", "digest", "file", "first", "loop", "more", "opened", "stalled", "weak"
    )  # fmt: skip

    def __init__(
        self, digest: str, file: str, first: Delivered, opened: datetime, weak: bool
    ) -> None:
        self.digest = digest
        self.file = file
        self.first = first  # the first copy; described only if the group is reported
        self.opened = opened
        self.weak = weak
        self.more: list[_CopyAt] | None = None  # the other copies, once there are any
        self.count = 1
        self.stalled = int(first.stalled)
        self.loop = 0  # copies received from loopback

    def copies(self, drop_loopback: int = 0) -> list[Copy]:
        """Every copy kept, in time order; the last ``drop_loopback`` copies from
        loopback left out (content-filter re-injections come after their original)."""
        d = self.first
        first = Copy(self.file, d.line, d.time, d.peer, d.stalled, d.start, d.end)
        out = [first, *(Copy(*c) for c in self.more or ())]
        out.sort(key=lambda c: (c.time or datetime.min, c.file, c.line))
        if drop_loopback:
            for i in range(len(out) - 1, -1, -1):
                if drop_loopback and rules.is_loopback(out[i].peer):
                    del out[i]
                    drop_loopback -= 1
        return out


class DuplicateIndex:
    def __init__(
        self, window: timedelta = DEFAULT_WINDOW, max_groups: int = DEFAULT_MAX_GROUPS
    ) -> None:
        self.window = window
        self.max_groups = max_groups
        self._groups: dict[str, _Group] = {}
        # Groups in the order they were opened; one no longer in _groups is skipped.
        self._order: deque[_Group] = deque()
        self._now: datetime | None = None
        self.deliveries = 0
        self.evicted_early = 0
        self._loopback: dict[str, bool] = {}  # peer → is it loopback (peers repeat)
        # (file, Message-ID) → queue files handed to a loopback relay, and copies
        # received from loopback: a content filter's round trip is in one MTA's log.
        self._handoffs: dict[tuple[str, str], int] = {}
        self._handed: dict[tuple[str, str, str], None] = {}  # hand-offs counted
        self._returned: dict[tuple[str, str], int] = {}
        self.set_aside: Counter[str] = Counter()  # copies not indexed, by reason
        self.loopback_counted = 0  # copies from loopback indexed as ordinary copies

    def add(self, file: str, d: Delivered) -> Sequence[Finding]:
        """Index one copy; returns the findings of the groups it closed (usually none)."""
        t = d.time
        if t is None:
            return _NONE
        loop = self._loopback.get(d.peer)
        if loop is None:
            if len(self._loopback) >= MAX_PEERS_CACHED:
                self._loopback.clear()
            loop = self._loopback[d.peer] = rules.is_loopback(d.peer)
        if loop and d.side is _SENDING:
            self._handoff(file, d)
        elif (loop or d.leg == REINJECTED) and d.message_id:  # XFORWARD names the
            self._count(self._returned, (file, d.message_id))  # original client
        self.deliveries += 1
        out: Sequence[Finding] = _NONE
        if self._now is None or t > self._now:
            self._now = t
            order = self._order
            if order and order[0].opened < t - self.window:
                out = self._expire()
        key, weak = _identity(d)
        if key is None:
            return out
        digest = key
        groups = self._groups
        g = groups.get(digest)
        if g is not None and abs(t - g.opened) > self.window:
            del groups[digest]
            out = [*out, *self._report(g)]
            g = None
        if g is None:
            if len(groups) >= self.max_groups:
                self.evicted_early += 1
                out = [*out, *self._report(self._pop_oldest())]
            g = groups[digest] = _Group(digest, file, d, t, weak)
            g.loop = int(loop)
            self._order.append(g)
            if len(self._order) > 2 * self.max_groups:  # replaced groups, out-of-order times
                self._order = deque(x for x in self._order if groups.get(x.digest) is x)
            return out
        g.count += 1
        g.stalled += d.stalled
        g.loop += loop
        if g.more is None:
            g.more = []
        if len(g.more) < MAX_COPIES - 1:
            g.more.append((file, d.line, t, d.peer, d.stalled, d.start, d.end))
        return out

    def close(self) -> Iterator[Finding]:
        groups, self._groups = self._groups, {}
        self._order.clear()
        for g in groups.values():
            yield from self._report(g)

    @property
    def size(self) -> int:
        return len(self._groups)

    def _handoff(self, file: str, d: Delivered) -> None:
        """A copy sent to a relay on loopback: remembered for its message, once per
        queue file (its recipients are one hand-off)."""
        mid = d.message_id
        if not mid or d.stalled:
            return
        key = (file, mid, d.queue_id or d.session)
        handed = self._handed
        if key in handed:  # another recipient of the same hand-off
            return
        if len(handed) >= MAX_HANDOFFS:
            del handed[next(iter(handed))]
        handed[key] = None
        self._count(self._handoffs, (file, mid))

    @staticmethod
    def _count(counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
        if key not in counts and len(counts) >= MAX_HANDOFFS:
            del counts[next(iter(counts))]
        counts[key] = counts.get(key, 0) + 1

    def _set_aside(self, g: _Group) -> int:
        """How many of the group's loopback copies are a content filter's round trip:
        received ones that a hand-off of the message explains (re-injections), sent
        ones that a copy received back explains (hand-offs)."""
        mid = g.first.message_id
        if not g.loop or not mid:
            return 0
        sent = g.first.side is _SENDING
        counts = self._returned if sent else self._handoffs
        # A sent copy names one recipient (a group per recipient), a received one
        # all of them: each group pairs its own loopback copies.
        pairs = min(counts.get((g.file, mid), 0), g.loop)
        if pairs:
            self.set_aside[LOOPBACK_RELAY if sent else REINJECTION] += pairs
        return pairs

    def _pop_oldest(self) -> _Group:
        groups, order = self._groups, self._order
        while True:
            g = order.popleft()
            if groups.get(g.digest) is g:
                del groups[g.digest]
                return g

    def _expire(self) -> Sequence[Finding]:
        assert self._now is not None
        limit = self._now - self.window
        groups, order = self._groups, self._order
        out: list[Finding] = []
        while order:
            g = order[0]
            if g.opened >= limit:
                break
            order.popleft()
            if groups.get(g.digest) is g:
                del groups[g.digest]
                out += self._report(g)
        return out

    def _report(self, g: _Group) -> Sequence[Finding]:
        reinjected = self._set_aside(g)
        if reinjected:
            self.deliveries -= reinjected
        self.loopback_counted += g.loop - reinjected
        count = g.count - reinjected
        if count < 2 or (g.weak and not g.stalled):
            return _NONE
        desc = _describe(g.first)
        copies = g.copies(reinjected)
        first = copies[0]
        parts = []
        prev: datetime | None = None
        for c in copies:  # intervals between session starts: the sender's retry cadence
            when = f"{c.time:%Y-%m-%d %H:%M:%S}" if c.time else "?"
            began = c.start or c.time
            gap = f" ({human_delta(began - prev)})" if prev and began else ""
            parts.append(f"{when}{gap} {c.file}:{c.line}")
            prev = began
        more = f" and {count - len(copies)} more" if count > len(copies) else ""
        stalled = f", {g.stalled} of them without a final reply" if g.stalled else ""
        hint = _interval_hint(copies, g.stalled)
        if reinjected:
            hint += (
                f" ({reinjected} more cop{'y' if reinjected == 1 else 'ies'} from loopback "
                f"set aside: the content filter re-injecting it.)"
            )
        detail = (
            f"{desc} reached the end of data {count} times within the window{stalled}: "
            f"{'; '.join(parts)}{more}.{hint}"
        )
        peers = sorted({c.peer for c in copies if c.peer})
        return (
            Finding(
                Kind.DUPLICATE,
                first.file,
                first.line,
                first.time,
                ", ".join(peers),
                g.first.session,
                detail,
                tuple(copies),
                first.start,
                g.first.mail_from,
            ),
        )


def _rcpts(d: Delivered) -> str:
    rcpt_to = d.rcpt_to
    rcpts = rcpt_to[0].lower() if len(rcpt_to) == 1 else ",".join(sorted(map(str.lower, rcpt_to)))
    if d.side is _SENDING:  # copies we sent never pair with copies we received
        return f"{rcpts}\0sent"
    return rcpts


def _identity(d: Delivered) -> tuple[str | None, bool]:
    """The key copies of one message share, and whether it is weak (see above)."""
    rcpts = _rcpts(d)
    if d.leg:
        rcpts = f"{rcpts}\0{d.leg}"
    if d.message_id:
        return f"m\0{d.message_id}\0{rcpts}", False
    if d.queue_id:  # retries of one queue file of ours: the same message, surely
        return f"q\0{d.queue_id}\0{rcpts}", False
    sender = (d.mail_from or "").lower()
    if not sender and not rcpts:
        return None, False
    if d.size is not None:
        return f"e\0{sender}\0{rcpts}\0{d.size}", True
    return f"w\0{sender}\0{rcpts}", True


def _describe(d: Delivered) -> str:
    to = f" to {', '.join(d.rcpt_to)}" if d.rcpt_to else ""
    sender = f" from <{d.mail_from}>" if d.mail_from is not None else ""
    if d.queue_id and not d.message_id:
        return f"Queue file {d.queue_id}{sender}{to}"
    if d.message_id:
        return f"Message <{d.message_id}>{sender}{to}"
    if d.size is not None:
        return f"A message{sender}{to} ({d.size} bytes)"
    return f"A message{sender}{to}"


def _interval_hint(copies: list[Copy], stalled: int) -> str:
    times = [t for t in (c.start or c.time for c in copies) if t is not None]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    if len(gaps) >= 2 and min(gaps) > 0 and max(gaps) <= 1.25 * min(gaps):
        return " The intervals are regular: the sender is retrying, it never saw a final reply."
    if stalled:
        return " A copy whose end of data got no reply, then another copy: a sender retry."
    return ""
