"""What the inspector asks its driver to do.

The core never performs I/O: every call returns a list of these immutable actions
and the asyncio shell (``smtpguard.gateway``) carries them out in order. Tests
compare them directly, so a log line or a close is a visible consequence of an input.

Plain native classes with ``__slots__``, not the frozen dataclasses of STYLE.md's
convention 1, as :class:`~smtpguard.core.grammar.Reply` is: a session builds ~20-40
of them (most of them ``Trace``), and a frozen dataclass's ``__init__`` is generated
at run time, so even the compiled core runs it interpreted, one
``object.__setattr__`` per field. A ``Trace`` (5 fields) cost ~1,700 ns to build
compiled; as a native class mypyc compiles its ``__init__``: ~40 ns from compiled
code (~140 ns called from Python), and pure Python ~330 ns instead of ~900
(bench/README.md, Core alone). They behave as the dataclasses did: the same
constructors, each equal to an instance of the same class with equal fields (two
field-less events of one class are equal), hashable, and shown as a dataclass shows
itself (``ToServer(data=b'...')``). The fields are ``Final``: mypy rejects an
assignment, and so does the compiled class at run time; the pure-Python class does
not check (a ``__setattr__`` would put back the cost of a dataclass's ``__init__``).
Each class writes these methods out: a shared base class is as fast, but the core
has no class deriving from another (tests/core/test_phases.py).
"""

from __future__ import annotations

import enum
from typing import Final

from smtpguard.core.dedupe import DedupeLookup, DedupeRecord


class Direction(enum.Enum):
    CLIENT_TO_GW = "client>gw"
    GW_TO_SERVER = "gw>server"
    SERVER_TO_GW = "server>gw"
    GW_TO_CLIENT = "gw>client"


# Which ``Trace`` entries a session builds (``Session(trace=...)``): a protocol log
# asks only for what its layout writes. Plain ints, not an ``enum.Flag``: the mask is
# read once per session and tested on every line.
TRACE_CLIENT: Final = 1  # client>gw commands and gw>client replies
TRACE_SERVER: Final = 2  # gw>server commands and server>gw replies
TRACE_SIZE: Final = 4  # the size of each message
TRACE_ALL: Final = TRACE_CLIENT | TRACE_SERVER | TRACE_SIZE


class ToServer:
    """Bytes to write to the upstream server (a ``memoryview`` on the DATA path)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data: Final = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ToServer):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash((self.data,))

    def __repr__(self) -> str:
        return f"ToServer(data={self.data!r})"


class ToClient:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: Final = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ToClient):
            return NotImplemented
        return self.data == other.data

    def __hash__(self) -> int:
        return hash((self.data,))

    def __repr__(self) -> str:
        return f"ToClient(data={self.data!r})"


class OpenServer:
    """Open a (new) upstream connection; answer with ``server_connected`` or
    ``server_closed``."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OpenServer):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(())

    def __repr__(self) -> str:
        return "OpenServer()"


class CloseServer:
    """Close the upstream connection. ``abort`` drops unsent bytes at once: used to
    make the server discard a partly relayed message (it never sees the terminator)."""

    __slots__ = ("abort",)

    def __init__(self, abort: bool = False) -> None:
        self.abort: Final = abort

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CloseServer):
            return NotImplemented
        return self.abort == other.abort

    def __hash__(self) -> int:
        return hash((self.abort,))

    def __repr__(self) -> str:
        return f"CloseServer(abort={self.abort!r})"


class ServerOutcome:
    """How the upstream connection just opened turned out, for the driver's health
    record of that server: ``ok`` once it greeted with 220; not ``ok`` when it failed
    before that (connect refused or timed out, lost, a 4xx greeting), with ``why``."""

    __slots__ = ("ok", "why")

    def __init__(self, ok: bool, why: str = "") -> None:
        self.ok: Final = ok
        self.why: Final = why

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerOutcome):
            return NotImplemented
        return self.ok == other.ok and self.why == other.why

    def __hash__(self) -> int:
        return hash((self.ok, self.why))

    def __repr__(self) -> str:
        return f"ServerOutcome(ok={self.ok!r}, why={self.why!r})"


class CloseClient:
    """Close the client connection after pending writes; ``reset`` sends a TCP RST."""

    __slots__ = ("reset",)

    def __init__(self, reset: bool = False) -> None:
        self.reset: Final = reset

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CloseClient):
            return NotImplemented
        return self.reset == other.reset

    def __hash__(self) -> int:
        return hash((self.reset,))

    def __repr__(self) -> str:
        return f"CloseClient(reset={self.reset!r})"


class StartTls:
    """Start a TLS handshake on one side (``"client"``: as a server with the
    gateway's certificate; ``"server"``: as a client). Answer with ``tls_started``
    or ``tls_failed``. No bytes are sent on that side until then."""

    __slots__ = ("side",)

    def __init__(self, side: str) -> None:
        self.side: Final = side

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StartTls):
            return NotImplemented
        return self.side == other.side

    def __hash__(self) -> int:
        return hash((self.side,))

    def __repr__(self) -> str:
        return f"StartTls(side={self.side!r})"


class SetTimer:
    """Call ``timer(now)`` at ``deadline`` (same clock as the ``now`` arguments),
    replacing the armed timer. The core only ever moves it earlier; a timer that
    fires before anything expired makes the core arm the next deadline."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: float | None) -> None:
        self.deadline: Final = deadline

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SetTimer):
            return NotImplemented
        return self.deadline == other.deadline

    def __hash__(self) -> int:
        return hash((self.deadline,))

    def __repr__(self) -> str:
        return f"SetTimer(deadline={self.deadline!r})"


class Trace:
    """One protocol-log entry: a command or reply line crossing the gateway, or the
    size of a message with its Message-ID in ``line`` (content is never traced)."""

    __slots__ = ("code", "direction", "line", "size", "verb")

    def __init__(
        self,
        direction: Direction,
        line: str = "",
        verb: str | None = None,
        code: int | None = None,
        size: int | None = None,
    ) -> None:
        self.direction: Final = direction
        self.line: Final = line
        self.verb: Final = verb
        self.code: Final = code
        self.size: Final = size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (
            self.direction == other.direction
            and self.line == other.line
            and self.verb == other.verb
            and self.code == other.code
            and self.size == other.size
        )

    def __hash__(self) -> int:
        return hash((self.direction, self.line, self.verb, self.code, self.size))

    def __repr__(self) -> str:
        return (
            f"Trace(direction={self.direction!r}, line={self.line!r}, verb={self.verb!r}, "
            f"code={self.code!r}, size={self.size!r})"
        )


class PolicyEvent:
    """An enforcement: stable ``id`` (documented in docs/events.md) and one line."""

    __slots__ = ("action", "id", "message")

    def __init__(self, id: str, message: str, action: str = "log") -> None:
        self.id: Final = id
        self.message: Final = message
        self.action: Final = action

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyEvent):
            return NotImplemented
        return self.id == other.id and self.message == other.message and self.action == other.action

    def __hash__(self) -> int:
        return hash((self.id, self.message, self.action))

    def __repr__(self) -> str:
        return f"PolicyEvent(id={self.id!r}, message={self.message!r}, action={self.action!r})"


class RateCheck:
    """Count one event of the ``rate-limit`` check ``check`` under ``key`` (which
    names the check and what it counts per: ``client:ADDRESS`` or ``sender:HASH``)
    in a window of ``period`` seconds shared by every worker and instance; answer
    with ``RateAnswer(count <= rate)``, or ``RateAnswer(None)`` when the store
    fails. What the finding concerns waits for the answer (core/ratelimit.py)."""

    __slots__ = ("check", "key", "period", "rate")

    def __init__(self, check: str, key: str, rate: int, period: float) -> None:
        self.check: Final = check
        self.key: Final = key
        self.rate: Final = rate
        self.period: Final = period

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RateCheck):
            return NotImplemented
        return (
            self.check == other.check
            and self.key == other.key
            and self.rate == other.rate
            and self.period == other.period
        )

    def __hash__(self) -> int:
        return hash((self.check, self.key, self.rate, self.period))

    def __repr__(self) -> str:
        return (
            f"RateCheck(check={self.check!r}, key={self.key!r}, rate={self.rate!r}, "
            f"period={self.period!r})"
        )


class PassLookup:
    """Ask the shared store whether the client's address passed the greeting wait
    (``[screen] greet_wait``) within ``pass_ttl``; answer with ``PassAnswer(passed)``
    (False when the store fails: the client waits, as a new one does)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PassLookup):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash(())

    def __repr__(self) -> str:
        return "PassLookup()"


class PassRecord:
    """The client waited for the whole greeting: remember its address in the shared
    store for ``ttl`` seconds, so that its next sessions are not made to wait."""

    __slots__ = ("ttl",)

    def __init__(self, ttl: float) -> None:
        self.ttl: Final = ttl

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PassRecord):
            return NotImplemented
        return self.ttl == other.ttl

    def __hash__(self) -> int:
        return hash((self.ttl,))

    def __repr__(self) -> str:
        return f"PassRecord(ttl={self.ttl!r})"


Action = (
    ToServer
    | ToClient
    | OpenServer
    | CloseServer
    | ServerOutcome
    | CloseClient
    | StartTls
    | SetTimer
    | Trace
    | PolicyEvent
    | DedupeLookup
    | DedupeRecord
    | RateCheck
    | PassLookup
    | PassRecord
)
