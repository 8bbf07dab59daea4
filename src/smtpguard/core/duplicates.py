"""Duplicate suppression in the session (docs/design.md#shared-state): the part that holds the final
dot for one store lookup.

:class:`~smtpguard.core.dedupe.Tracker` collects the envelope the server accepted and
the digest of the message as it streams. At the client's end of data this part asks
the driver (``DedupeLookup``) and holds the last octets of the terminator; client
input waits too, so nothing overtakes the dot. The answer (``DedupeAnswer``) either
releases the dot (not seen, or the store failed) or, for a copy the server accepted
before, answers ``250 … Already accepted as <id>`` and aborts the upstream, which never
sees the copy's terminator. Only a server 250 to the final dot records a key.

The part knows nothing of the session: it is fed the bytes and replies it needs and
returns what should happen (:class:`Release`, :class:`Suppress`, a
``DedupeLookup`` to send); the session applies it.
"""

from __future__ import annotations

from typing import Final

from smtpguard.core.dedupe import DedupeLookup, DedupeRecord, Tracker, already_accepted, queue_id
from smtpguard.core.grammar import Reply
from smtpguard.core.pipeline import Slot


class Release:
    """Not a known copy: relay the held octets; the server's reply fills ``slot``."""

    __slots__ = ("held", "slot")

    def __init__(self, slot: Slot, held: bytes) -> None:
        self.slot: Final = slot
        self.held: Final = held


class Suppress:
    """A copy the server accepted as ``queue`` before: ``slot`` gets ``reply``, the
    transaction ends and the upstream is dropped without the terminator."""

    __slots__ = ("queue", "reply", "slot")

    def __init__(self, slot: Slot, reply: bytes, queue: str) -> None:
        self.slot: Final = slot
        self.reply: Final = reply
        self.queue: Final = queue


class Duplicates:
    """``named``: the suppressed copy's reply names the earlier queue ID."""

    __slots__ = ("_named", "_slot", "tracker")

    def __init__(self, named: bool) -> None:
        self._named = named
        self.tracker = Tracker()
        self._slot: Slot | None = None  # the final reply whose dot is held

    @property
    def waiting(self) -> bool:
        """A lookup is outstanding (its answer releases or suppresses the dot)."""
        return self._slot is not None

    def lookup(self, slot: Slot) -> DedupeLookup | bytes:
        """At the client's end of data: the lookup to send while the dot is held for
        ``slot``, or (no key: nothing to look up) the held octets to relay now."""
        tx = self.tracker
        tx.sent_key = None
        key = tx.end_key()
        if key is None:
            held, tx.held = tx.held, b""
            return held
        tx.sent_key = key
        self._slot = slot
        return DedupeLookup(key)

    def answer(self, queue: str | None) -> Release | Suppress | None:
        """The driver's answer: the queue ID the server gave this transaction before,
        or None (not seen, or the store failed: the message is relayed). None back:
        no lookup was outstanding."""
        slot, self._slot = self._slot, None
        if slot is None:
            return None
        tx = self.tracker
        held, tx.held = tx.held, b""
        if queue is None:
            return Release(slot, held)
        tx.sent_key = None
        return Suppress(slot, already_accepted(queue if self._named else ""), queue)

    def accepted(self, reply: Reply) -> DedupeRecord | None:
        """The server's final reply to a message: only a 250 records its key."""
        tx = self.tracker
        key, tx.sent_key = tx.sent_key, None
        if key is not None and reply.code == 250:
            return DedupeRecord(key, queue_id(reply.text) or key[:16])
        return None
