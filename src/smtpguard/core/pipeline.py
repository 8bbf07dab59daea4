"""The reply pipeline: one slot per reply owed to the client, filled in any order,
sent strictly in order (RFC 2920 §3.1).

A forwarded command's slot waits for the server's next reply (``awaiting`` is the
subset of slots, in order, that the server still owes); a command the gateway answers
itself gets a slot already filled. Only the filled slots at the head are sent
(:meth:`take_ready`), so a local reply waits behind earlier server replies: nothing
is dropped or reordered.
"""

from __future__ import annotations

from typing import Final

END_OF_DATA_VERB: Final = "."  # slot name for the final reply to a message
TLS_SLOT: Final = "+STARTTLS"  # the gateway's own 220 to STARTTLS (terminate mode)


class Slot:
    """A reply position. ``raw``: the command line (for replay); ``reply``: None until
    known; ``cancelled``: why the gateway sent ``*`` in place of the client's SASL
    response (RFC 4954 §4), so that the client gets the gateway's 501 once the
    server has answered the ``*``: the state lives on the reply it concerns."""

    __slots__ = ("cancelled", "raw", "reply", "verb")

    def __init__(self, verb: str, raw: bytes = b"", reply: bytes | None = None) -> None:
        self.verb = verb
        self.raw = raw
        self.reply = reply
        self.cancelled: str | None = None


class ReplyPipeline:
    """Lists, not deques: a session owes a handful of replies at most (the client's
    pipelining is bounded by ``max_pending``), and an empty deque costs 624 bytes
    against a list's 56, in every idle session."""

    __slots__ = ("awaiting", "slots")

    def __init__(self) -> None:
        self.slots: list[Slot] = []  # read-only outside (hot-path checks)
        self.awaiting: list[Slot] = []  # read-only outside (hot-path checks)

    def __len__(self) -> int:
        return len(self.slots)

    def local(self, verb: str, reply: bytes) -> Slot:
        """A reply the gateway gives itself, in its place in the order."""
        slot = Slot(verb, reply=reply)
        self.slots.append(slot)
        return slot

    def pending(self, verb: str) -> Slot:
        """A reply the gateway will fill later (not from the server)."""
        slot = Slot(verb)
        self.slots.append(slot)
        return slot

    def forwarded(self, verb: str, raw: bytes) -> Slot:
        """A command sent to the server: its slot takes the server's next reply."""
        slot = Slot(verb, raw)
        self.slots.append(slot)
        self.awaiting.append(slot)
        return slot

    def expect(self, slot: Slot) -> None:
        """A pending slot's reply is now to come from the server."""
        self.awaiting.append(slot)

    @property
    def owed_by_server(self) -> int:
        return len(self.awaiting)

    def next_owed(self) -> Slot | None:
        return self.awaiting[0] if self.awaiting else None

    def take_owed(self) -> Slot:
        return self.awaiting.pop(0)

    def take_ready(self) -> Slot:
        """Remove and return the head slot, which the caller saw filled (the session
        sends ``while slots and slots[0].reply is not None``)."""
        return self.slots.pop(0)

    def cut(self, reply: bytes | None) -> None:
        """Keep the filled head; the first unfilled slot gets ``reply`` (or
        nothing); every later slot is dropped (the session is ending)."""
        slots = self.slots
        kept = 0
        for slot in slots:
            if slot.reply is None:
                break
            kept += 1
        del slots[kept:]  # in place: the list is the same object throughout
        if reply is not None:
            slots.append(Slot("", reply=reply))
        self.awaiting.clear()

    def clear(self) -> None:
        self.slots.clear()
        self.awaiting.clear()
