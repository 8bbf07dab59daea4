"""What the driver tells the inspector: small frozen input events.

The shell turns every socket read, connection change, timer and TLS outcome into one
of these and hands it to :meth:`~smtpguard.core.session.Session.handle` with the
current time; the session answers with the actions to carry out
(:mod:`smtpguard.core.actions`). Nothing else enters the core.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Side(enum.StrEnum):
    """Which connection an event or action concerns (a ``str``, so ``"client"``
    compares equal)."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class Start:
    """The client is connected (and admitted): the session begins."""


@dataclass(frozen=True, slots=True)
class ClientData:
    data: bytes


@dataclass(frozen=True, slots=True)
class ClientEof:
    """The client half-closed (or closed) its side; bytes before it still count."""


@dataclass(frozen=True, slots=True)
class ServerConnected:
    """The upstream connection asked for with ``OpenServer`` is up."""


@dataclass(frozen=True, slots=True)
class ServerData:
    data: bytes


@dataclass(frozen=True, slots=True)
class ServerClosed:
    """The upstream connection closed, or could not be opened."""


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The timer armed with ``SetTimer`` fired."""


@dataclass(frozen=True, slots=True)
class TlsDone:
    """The TLS handshake asked for with ``StartTls(side)`` completed."""

    side: Side


@dataclass(frozen=True, slots=True)
class TlsFailed:
    side: Side


@dataclass(frozen=True, slots=True)
class DedupeAnswer:
    """The answer to ``DedupeLookup``: the queue ID the server gave the same
    transaction before, or None (not seen, or the store failed)."""

    queue_id: str | None


@dataclass(frozen=True, slots=True)
class RateAnswer:
    """The answer to ``RateCheck``: True if the event is within the check's rate,
    False if over it, None if the store failed (allowed: limits fail open)."""

    allowed: bool | None


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Drain: finish the transaction in flight, then close with 421."""


Event = (
    Start
    | ClientData
    | ClientEof
    | ServerConnected
    | ServerData
    | ServerClosed
    | TimerFired
    | TlsDone
    | TlsFailed
    | DedupeAnswer
    | RateAnswer
    | Shutdown
)
