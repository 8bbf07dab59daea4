"""Flow control for one client session: what the core is fed now, and whether the
client is read.

Theory of operation: client bytes are *held* as they are read and fed to the core in
slices of ``FEED_SLICE``. Outside the bulk phases (DATA, a TLS tunnel), where every
line may make a reply, at most ``FEED_BUDGET`` bytes are fed per event-loop turn; the
rest waits for the next turn, so one abusive session cannot starve the others on its
worker. Nothing is fed while the gateway's write buffer towards the client is above
its high mark (``client_full``): a client that sends commands without reading its
replies stops being fed, and then stops being read.

The client is read only when nothing is held, neither write buffer is full (a slow
server never makes the gateway buffer a message; a slow client never makes it buffer
the server's replies) and the core's own unparsed backlog is under
``BACKLOG_HIGH``. :meth:`Flow.update_reading` says when that changes; the shell
pauses or resumes the transport then.

The transports' own write buffers are bounded by ``WRITE_HIGH``/``WRITE_LOW`` (set
on both connections, and again after each TLS upgrade): above the high mark the
transport calls ``pause_writing``, which sets ``client_full`` or ``up_full`` here.

No I/O here: the shell (``connection.py``, ``upstreamconn.py``) owns the transports
and the event loop.
"""

from __future__ import annotations

from typing import Final

# Held, unparsed client bytes above which the client is not read (pipelining bound).
BACKLOG_HIGH: Final = 64 * 1024
# Client bytes fed to the core at a time, and per event-loop turn outside DATA.
FEED_SLICE: Final = 4 * 1024
FEED_BUDGET: Final = 16 * 1024
# Transport write buffer marks: big enough to stream a message without stalls.
WRITE_HIGH: Final = 1024 * 1024
WRITE_LOW: Final = 256 * 1024


class Flow:
    """The held client bytes, the two write-buffer marks and the reading state."""

    def __init__(self) -> None:
        self.held = b""  # client bytes read but not yet fed to the core
        self.up_full = False  # the upstream's write buffer is above its high mark
        self.client_full = False  # our write buffer towards the client is above its mark
        self.reading = True  # the client transport is being read
        self._budget = FEED_BUDGET  # left to feed in this turn (outside bulk phases)

    def hold(self, data: bytes) -> None:
        self.held = self.held + data if self.held else data

    def new_turn(self) -> None:
        """An event-loop turn begins: the budget is full again."""
        self._budget = FEED_BUDGET

    def take(self, bulk: bool) -> bytes:
        """The next slice for the core, or ``b""`` when nothing is to be fed now
        (nothing held, the client not reading its replies, or this turn's budget
        spent). ``bulk``: the core is in a phase that takes any amount at once."""
        held = self.held
        if not held or self.client_full:
            return b""
        if bulk:
            self.held = b""
            return held
        budget = self._budget
        if budget <= 0:
            return b""
        take = len(held)  # (not min() of three: a generic call once compiled)
        take = min(take, FEED_SLICE)
        take = min(take, budget)
        self._budget = budget - take
        if take == len(held):
            self.held = b""
            return held
        self.held = held[take:]
        return held[:take]

    def take_all(self) -> bytes:
        """Everything held, whatever the marks say (the client closed its side)."""
        held, self.held = self.held, b""
        return held

    @property
    def next_turn(self) -> bool:
        """Bytes are left that only this turn's budget kept back."""
        return bool(self.held) and not self.client_full

    def update_reading(self, backlog: int) -> bool:
        """Decide whether the client should be read (``backlog``: the core's unparsed
        bytes); True when that changed, and :attr:`reading` says which way."""
        want = (
            not self.up_full and not self.client_full and not self.held and backlog <= BACKLOG_HIGH
        )
        if want == self.reading:
            return False
        self.reading = want
        return True
