"""What the inspector asks its driver to do.

The core never performs I/O: every call returns a list of these frozen actions and
the asyncio shell (``smtpguard.gateway``) carries them out in order. Tests compare
them directly, so a log line or a close is a visible consequence of an input.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class ToServer:
    """Bytes to write to the upstream server (a ``memoryview`` on the DATA path)."""

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class ToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenServer:
    """Open a (new) upstream connection; answer with ``server_connected`` or
    ``server_closed``."""


@dataclass(frozen=True, slots=True)
class CloseServer:
    """Close the upstream connection. ``abort`` drops unsent bytes at once: used to
    make the server discard a partly relayed message (it never sees the terminator)."""

    abort: bool = False


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the client connection after pending writes; ``reset`` sends a TCP RST."""

    reset: bool = False


@dataclass(frozen=True, slots=True)
class StartTls:
    """Start a TLS handshake on one side (``"client"``: as a server with the
    gateway's certificate; ``"server"``: as a client). Answer with ``tls_started``
    or ``tls_failed``. No bytes are sent on that side until then."""

    side: str


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call ``timer(now)`` at ``deadline`` (same clock as the ``now`` arguments),
    replacing the armed timer. The core only ever moves it earlier; a timer that
    fires before anything expired makes the core arm the next deadline."""

    deadline: float | None


@dataclass(frozen=True, slots=True)
class Trace:
    """One protocol-log entry: a command or reply line crossing the gateway, or the
    size of a message (content is never traced)."""

    direction: Direction
    line: str = ""
    verb: str | None = None
    code: int | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """An enforcement: stable ``id`` (documented in docs/events.md) and one line."""

    id: str
    message: str
    action: str = "log"


@dataclass(frozen=True, slots=True)
class RateCheck:
    """Count one event of the ``rate-limit`` check ``check`` under ``key`` (which
    names the check and what it counts per: ``client:ADDRESS`` or ``sender:HASH``)
    in a window of ``period`` seconds shared by every worker and instance; answer
    with ``RateAnswer(count <= rate)``, or ``RateAnswer(None)`` when the store
    fails. What the finding concerns waits for the answer (core/ratelimit.py)."""

    check: str
    key: str
    rate: int
    period: float


Action = (
    ToServer
    | ToClient
    | OpenServer
    | CloseServer
    | CloseClient
    | StartTls
    | SetTimer
    | Trace
    | PolicyEvent
    | DedupeLookup
    | DedupeRecord
    | RateCheck
)
