"""Deadlines: the client's idle timeout and the server's reply timeout, and the one
timer the shell arms for the earlier of them.

The core never reads the clock: ``now`` comes in with every event. Deadlines mostly
move later (each command pushes the idle timeout), so the armed timer is only ever
moved earlier; when it fires before anything expired, the session re-arms it.
"""

from __future__ import annotations

from smtpguard.core.pipeline import END_OF_DATA_VERB
from smtpguard.core.policy import Timeouts


def reply_timeout(t: Timeouts, verb: str) -> float:
    """How long the server may take to answer ``verb`` (RFC 5321 §4.5.3.2)."""
    if verb == END_OF_DATA_VERB:
        return t.data_end
    return t.data_init if verb == "DATA" else t.command


class Deadlines:
    __slots__ = ("client", "server", "timer")

    def __init__(self) -> None:
        self.client: float | None = None  # the client's turn ends (idle timeout)
        self.server: float | None = None  # the server's answer is due
        self.timer: float | None = None  # what the shell has armed

    def next_timer(self, now: float, client_turn: bool, idle: float) -> float | None:
        """The deadline to arm now, or None if the armed timer already covers it."""
        deadline = self.server
        if client_turn:
            client = self.client
            if client is None:
                client = self.client = now + idle
            if deadline is None or client < deadline:
                deadline = client
        if deadline is not None and (self.timer is None or deadline < self.timer):
            self.timer = deadline
            return deadline
        return None

    def expired(self, deadline: float | None, now: float) -> bool:
        return deadline is not None and now >= deadline
