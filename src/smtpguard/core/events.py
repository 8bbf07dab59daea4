"""What the driver tells the inspector: small immutable input events.

The shell turns every socket read, connection change, timer and TLS outcome into one
of these and hands it to :meth:`~smtpguard.core.session.Session.handle` with the
current time; the session answers with the actions to carry out
(:mod:`smtpguard.core.actions`). Nothing else enters the core.

Plain native classes with ``__slots__``, not the frozen dataclasses of STYLE.md's
convention 1, for the reason given in :mod:`smtpguard.core.actions` (a frozen
dataclass's generated ``__init__`` runs interpreted even compiled: ~1,700 ns for 5
fields against ~40 ns for a native class; ~15 events per SMTP session). The same
constructors; each equal to an instance of the same class with equal fields (two
field-less events of one class are equal), hashable, and shown as a dataclass shows
itself (``ServerData(data=b'...')``). The fields are ``Final``: mypy rejects an
assignment, and so does the compiled class at run time; the pure-Python class does
not check (a ``__setattr__`` would put back the cost of a dataclass's ``__init__``).
Each class writes these methods out: a shared base class is as fast, but the core
has no class deriving from another (tests/core/test_phases.py).
"""

from __future__ import annotations

import enum
from typing import Final


class Side(enum.StrEnum):
    """Which connection an event or action concerns (a ``str``, so ``"client"``
    compares equal)."""

    CLIENT = "client"
    SERVER = "server"


class Start:
    """The client is connected (and admitted): the session begins."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Start):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(())

    def __repr__(self) -> str:
        return "Start()"


class ClientData:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: Final = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientData):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash((self.data,))

    def __repr__(self) -> str:
        return f"ClientData(data={self.data!r})"


class ClientEof:
    """The client half-closed (or closed) its side; bytes before it still count."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientEof):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(())

    def __repr__(self) -> str:
        return "ClientEof()"


class ServerConnected:
    """The upstream connection asked for with ``OpenServer`` is up."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerConnected):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(())

    def __repr__(self) -> str:
        return "ServerConnected()"


class ServerData:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: Final = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerData):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash((self.data,))

    def __repr__(self) -> str:
        return f"ServerData(data={self.data!r})"


class ServerClosed:
    """The upstream connection closed, or could not be opened."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerClosed):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(())

    def __repr__(self) -> str:
        return "ServerClosed()"


class TimerFired:
    """The timer armed with ``SetTimer`` fired."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimerFired):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(())

    def __repr__(self) -> str:
        return "TimerFired()"


class TlsDone:
    """The TLS handshake asked for with ``StartTls(side)`` completed."""

    __slots__ = ("side",)

    def __init__(self, side: Side) -> None:
        self.side: Final = side

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TlsDone):
            return NotImplemented
        return self.side == other.side

    def __hash__(self) -> int:
        return hash((self.side,))

    def __repr__(self) -> str:
        return f"TlsDone(side={self.side!r})"


class TlsFailed:
    __slots__ = ("side",)

    def __init__(self, side: Side) -> None:
        self.side: Final = side

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TlsFailed):
            return NotImplemented
        return self.side == other.side

    def __hash__(self) -> int:
        return hash((self.side,))

    def __repr__(self) -> str:
        return f"TlsFailed(side={self.side!r})"


class DedupeAnswer:
    """The answer to ``DedupeLookup``: the queue ID the server gave the same
    transaction before, or None (not seen, or the store failed)."""

    __slots__ = ("queue_id",)

    def __init__(self, queue_id: str | None) -> None:
        self.queue_id: Final = queue_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DedupeAnswer):
            return NotImplemented
        return self.queue_id == other.queue_id

    def __hash__(self) -> int:
        return hash((self.queue_id,))

    def __repr__(self) -> str:
        return f"DedupeAnswer(queue_id={self.queue_id!r})"


class RateAnswer:
    """The answer to ``RateCheck``: True if the event is within the check's rate,
    False if over it, None if the store failed (allowed: limits fail open)."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: bool | None) -> None:
        self.allowed: Final = allowed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RateAnswer):
            return NotImplemented
        return self.allowed == other.allowed

    def __hash__(self) -> int:
        return hash((self.allowed,))

    def __repr__(self) -> str:
        return f"RateAnswer(allowed={self.allowed!r})"


class PassAnswer:
    """The answer to ``PassLookup``: True if the client's address passed the
    greeting wait within ``pass_ttl`` (its greeting is sent at once)."""

    __slots__ = ("passed",)

    def __init__(self, passed: bool) -> None:
        self.passed: Final = passed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PassAnswer):
            return NotImplemented
        return self.passed == other.passed

    def __hash__(self) -> int:
        return hash((self.passed,))

    def __repr__(self) -> str:
        return f"PassAnswer(passed={self.passed!r})"


class Shutdown:
    """Drain: finish the transaction in flight, then close with 421."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Shutdown):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(())

    def __repr__(self) -> str:
        return "Shutdown()"


class Cut:
    """The drain cut short (a second stop signal, or the grace over): the reply still
    owed becomes ``421 4.3.2`` and both connections close now."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cut):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(("cut",))

    def __repr__(self) -> str:
        return "Cut()"


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
    | PassAnswer
    | Shutdown
    | Cut
)
