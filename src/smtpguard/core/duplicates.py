"""Duplicate suppression in the session (DESIGN §3.7): the part that holds the final
dot for one store lookup.

:class:`~smtpguard.core.dedupe.Tracker` collects the envelope the server accepted and
the digest of the message as it streams. At the client's end of data this part asks
the driver (``DedupeLookup``) and holds the last octets of the terminator; client
input waits too, so nothing overtakes the dot. The answer (``DedupeAnswer``) either
releases the dot (not seen, or the store failed) or, for a copy the server accepted
before, answers ``250 … Already accepted as <id>`` and aborts the upstream, which never
sees the copy's terminator. Only a server 250 to the final dot records a key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtpguard.core.actions import ToServer
from smtpguard.core.dedupe import DedupeLookup, DedupeRecord, Tracker, already_accepted, queue_id
from smtpguard.core.grammar import Reply
from smtpguard.core.phases import Phase, Trigger, Upstream
from smtpguard.core.pipeline import Slot
from smtpguard.core.policy import DedupeReply

if TYPE_CHECKING:
    from smtpguard.core.session import Session


class Duplicates:
    __slots__ = ("_s", "_slot", "tracker")
    __deletable__ = ("_s",)  # detach(): a closed session is freed without the cycle collector

    def __init__(self, session: Session) -> None:
        self._s = session
        self.tracker = Tracker()
        self._slot: Slot | None = None  # the final reply whose dot is held

    def detach(self) -> None:
        """The session has closed: drop the reference back to it."""
        del self._s
        self._slot = None

    def hold_dot(self, data: bytes | memoryview) -> None:
        """Relay the message's last bytes but the end of its terminator."""
        part = self.tracker.hold(data)
        if len(part):
            self._s.out.emit(ToServer(part))

    def lookup(self, slot: Slot) -> bool:
        """At the client's end of data: True while the dot is held for the answer."""
        tx = self.tracker
        s = self._s
        tx.sent_key = None
        key = tx.end_key()
        if key is None:
            if tx.held:
                s.out.emit(ToServer(tx.held))
                tx.held = b""
            return False
        tx.sent_key = key
        self._slot = slot
        s.goto(Trigger.DEDUPE_LOOKUP)
        s.out.emit(DedupeLookup(key))
        return True

    def answer(self, queue: str | None, now: float) -> None:
        """The driver's answer: the queue ID the server gave this transaction before,
        or None (not seen, or the store failed: the message is relayed)."""
        s = self._s
        slot, self._slot = self._slot, None
        if slot is None:
            return
        tx = self.tracker
        held, tx.held = tx.held, b""
        if s.phase is Phase.WAIT:
            s.goto(Trigger.DEDUPE_ANSWER)
        if slot.reply is not None or s.link.state is not Upstream.READY:
            return  # the server was lost meanwhile: the client has its 4xx
        if queue is None:
            s.out.emit(ToServer(held))
            s.replies.expect(slot)
            s.deadlines.server = now + s.policy.timeouts.data_end
            return
        tx.sent_key = None
        s.out.event(
            "SG-DEDUPE-SUPPRESSED",
            f"copy of a message the server accepted as {queue}: not relayed again",
            "suppress",
        )
        named = s.policy.dedupe_answer is DedupeReply.QUEUE_ID
        slot.reply = already_accepted(queue if named else "")
        s.envelope.in_transaction = False
        s.flush()
        s.link.reconnect(now)  # the server never sees this copy's terminator

    def accepted(self, reply: Reply) -> None:
        """The server's final reply to a message: only a 250 records its key."""
        tx = self.tracker
        key, tx.sent_key = tx.sent_key, None
        if key is not None and reply.code == 250:
            self._s.out.emit(DedupeRecord(key, queue_id(reply.text) or key[:16]))
