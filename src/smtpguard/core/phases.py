"""The session's phases and what moves between them, as tables.

``TRANSITIONS`` is the whole client-side state machine: which trigger moves which
phase where. The session changes phase only by looking the pair up here
(``Session.goto``, through ``NEXT``: the same table keyed for the hot path), so a
pair missing from the table is a bug that fails loudly (``KeyError``), never a
silent new state. ``UPSTREAM`` is the same for the upstream connection's life
cycle (``UpstreamLink.move``, through ``NEXT_UPSTREAM``), and ``ENDING`` for how
the session reads the client's next byte as it ends (EOF, shutdown, closing;
``Session.end``, through ``NEXT_ENDING``). Inside the command phases, the command
part reads the client's next line by two more: ``FRAMING`` (a line, or the rest of
an over-long one being skipped) and ``HELLO`` (any command, or EHLO/HELO first after
TLS). A pair missing from a table is an event the state does not expect: the lookup
raises :class:`NotInTable`, naming the table, the state and the trigger (as h11's
``LocalProtocolError`` does), which the shell's one door turns into a teardown.
``docs/architecture.md`` shows the tables, generated from here by :func:`mermaid`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final


class Phase(enum.Enum):
    __hash__ = object.__hash__  # C-level: these key the tables on the hot path

    COMMAND = "command"  # framing command lines
    WAIT = "wait"  # a held command forwarded: client bytes wait for the server's answer
    AUTH = "auth"  # the server sent 334: the next client line is an AUTH response
    DATA = "data"  # relaying message data
    BDAT = "bdat"  # draining a refused BDAT chunk
    QUIT = "quit"  # QUIT forwarded (or the PIX split-EOD bug): nothing more is read
    TLS = "tls"  # a TLS handshake with the client is under way: nothing is read
    TUNNEL = "tunnel"  # STARTTLS passthrough: bytes relayed, no longer inspected
    RATE = "rate"  # a command or the final dot waits for a shared rate-limit count
    CLOSED = "closed"


class Trigger(enum.Enum):
    __hash__ = object.__hash__  # C-level: these key the tables on the hot path

    HOLD = "held command forwarded"  # DATA, AUTH, EHLO, HELO, STARTTLS; any in PIX mode
    QUIT = "QUIT forwarded"
    BDAT = "BDAT refused"
    BDAT_DRAINED = "BDAT chunk drained"
    TLS_OFFERED = "STARTTLS answered 220 by the gateway"
    TLS_DONE = "client TLS handshake done"
    AUTH_LINE = "AUTH response line"
    REPLY = "reply to the held command"
    REPLY_354 = "354 to DATA"
    REPLY_334 = "334 to AUTH"
    REPLY_TLS = "220 to STARTTLS (passthrough)"
    END_OF_DATA = "end of data"
    MESSAGE_DROPPED = "message dropped by a check"
    SPLIT_EOD_BUG = "split end of data swallowed (PIX emulation)"
    DEDUPE_LOOKUP = "final dot held for a duplicate lookup"
    DEDUPE_ANSWER = "duplicate lookup answered"
    RATE_HOLD = "held for a shared rate-limit count"
    RATE_ANSWER = "rate-limit count answered"
    CLOSE = "close"


_ALL = tuple(Phase)

TRANSITIONS: Final[dict[tuple[Phase, Trigger], Phase]] = {
    (Phase.COMMAND, Trigger.HOLD): Phase.WAIT,
    (Phase.COMMAND, Trigger.QUIT): Phase.QUIT,
    (Phase.COMMAND, Trigger.BDAT): Phase.BDAT,
    (Phase.COMMAND, Trigger.TLS_OFFERED): Phase.TLS,
    (Phase.BDAT, Trigger.BDAT_DRAINED): Phase.COMMAND,
    (Phase.AUTH, Trigger.AUTH_LINE): Phase.WAIT,
    (Phase.WAIT, Trigger.REPLY): Phase.COMMAND,
    (Phase.WAIT, Trigger.REPLY_354): Phase.DATA,
    (Phase.WAIT, Trigger.REPLY_334): Phase.AUTH,
    (Phase.WAIT, Trigger.REPLY_TLS): Phase.TUNNEL,
    (Phase.DATA, Trigger.END_OF_DATA): Phase.COMMAND,
    (Phase.DATA, Trigger.MESSAGE_DROPPED): Phase.COMMAND,
    (Phase.DATA, Trigger.SPLIT_EOD_BUG): Phase.QUIT,
    (Phase.TLS, Trigger.TLS_DONE): Phase.COMMAND,
    (Phase.COMMAND, Trigger.DEDUPE_LOOKUP): Phase.WAIT,
    (Phase.WAIT, Trigger.DEDUPE_ANSWER): Phase.COMMAND,
    (Phase.COMMAND, Trigger.RATE_HOLD): Phase.RATE,
    (Phase.RATE, Trigger.RATE_ANSWER): Phase.COMMAND,
    **{(p, Trigger.CLOSE): Phase.CLOSED for p in _ALL if p is not Phase.CLOSED},
}

# The same table keyed by trigger, then phase: ``NEXT[trigger][phase]`` is
# ``TRANSITIONS[(phase, trigger)]`` without building and hashing a key tuple on the
# hot path. Derived from TRANSITIONS, never written by hand: a pair missing there is
# missing here (``KeyError``).
NEXT: Final[dict[Trigger, dict[Phase, Phase]]] = {
    t: {p: dst for (p, trig), dst in TRANSITIONS.items() if trig is t} for t in Trigger
}

# Which trigger a server reply to a held command is: (verb, reply class) -> trigger.
REPLY_TRIGGERS: Final[dict[tuple[str, int], Trigger]] = {
    ("DATA", 3): Trigger.REPLY_354,
    ("AUTH", 3): Trigger.REPLY_334,
    ("STARTTLS", 2): Trigger.REPLY_TLS,
}

# Phases in which the gateway waits for the client (its idle timeout runs).
CLIENT_TURN: Final = frozenset({Phase.COMMAND, Phase.DATA, Phase.AUTH, Phase.BDAT})


class NotInTable(Exception):
    """A trigger the current state does not expect: a bug, named, never a silent state."""

    def __init__(self, table: str, state: enum.Enum, trigger: enum.Enum) -> None:
        super().__init__(f"{table}: {trigger.name} is not expected in {state.name}")
        self.table = table
        self.current = state
        self.trigger = trigger


def next_phase(phase: Phase, trigger: Trigger) -> Phase:
    return TRANSITIONS[(phase, trigger)]


class Upstream(enum.Enum):
    __hash__ = object.__hash__  # C-level: these key the tables on the hot path

    CONNECTING = "connecting"
    GREETING = "greeting"  # connected, waiting for the 220
    HANDSHAKE = "handshake"  # the gateway's own exchanges: XCLIENT, STARTTLS, replay
    READY = "ready"
    PARKED = "parked"  # the server closed it between transactions: reopened on demand
    DOWN = "down"


class Link(enum.Enum):
    __hash__ = object.__hash__  # C-level: these key the tables on the hot path

    CONNECTED = "connected"
    GREETED = "220 greeting: handshake"
    REFUSED = "non-220 greeting: relayed"
    READY = "handshake done"
    SECURE = "terminate: STARTTLS to the server"
    LOST = "lost or dropped"
    IDLE_CLOSED = "closed by the server between transactions"
    RECONNECT = "fresh connection"


UPSTREAM: Final[dict[tuple[Upstream, Link], Upstream]] = {
    (Upstream.CONNECTING, Link.CONNECTED): Upstream.GREETING,
    (Upstream.GREETING, Link.GREETED): Upstream.HANDSHAKE,
    (Upstream.GREETING, Link.REFUSED): Upstream.READY,
    (Upstream.HANDSHAKE, Link.READY): Upstream.READY,
    (Upstream.READY, Link.SECURE): Upstream.HANDSHAKE,
    (Upstream.READY, Link.IDLE_CLOSED): Upstream.PARKED,
    **{(u, Link.LOST): Upstream.DOWN for u in Upstream if u is not Upstream.DOWN},
    **{(u, Link.RECONNECT): Upstream.CONNECTING for u in Upstream},
}

# UPSTREAM keyed by trigger, then state, as NEXT is for TRANSITIONS.
NEXT_UPSTREAM: Final[dict[Link, dict[Upstream, Upstream]]] = {
    t: {u: dst for (u, trig), dst in UPSTREAM.items() if trig is t} for t in Link
}


class Ending(enum.Enum):
    """How the session reads the client's next byte, whatever the phase: the
    session's second table (``ENDING``). Each state says whether the client may still
    send (EOF), whether a shutdown asked the session to finish its transaction and
    say 421 (DRAINING), and whether nothing more is read at all (CLOSING: close once
    every owed reply is flushed)."""

    __hash__ = object.__hash__  # C-level: these key the tables on the hot path

    OPEN = "open"  # lines read as the phase says
    DRAINING = "draining"  # shutdown: the transaction may finish, then 421
    EOF = "eof"  # the client sent EOF: what it sent before is still read
    EOF_DRAINING = "eof, draining"
    CLOSING = "closing"  # nothing more is read: close once the owed replies are out
    CLOSING_EOF = "closing, eof"


class End(enum.Enum):
    __hash__ = object.__hash__  # C-level: these key the tables on the hot path

    EOF = "client EOF"
    SHUTDOWN = "shutdown"
    CLOSE = "close once flushed"


ENDING: Final[dict[tuple[Ending, End], Ending]] = {
    (Ending.OPEN, End.EOF): Ending.EOF,
    (Ending.OPEN, End.SHUTDOWN): Ending.DRAINING,
    (Ending.OPEN, End.CLOSE): Ending.CLOSING,
    (Ending.DRAINING, End.EOF): Ending.EOF_DRAINING,
    (Ending.DRAINING, End.SHUTDOWN): Ending.DRAINING,
    (Ending.DRAINING, End.CLOSE): Ending.CLOSING,
    (Ending.EOF, End.EOF): Ending.EOF,
    (Ending.EOF, End.SHUTDOWN): Ending.EOF_DRAINING,
    (Ending.EOF, End.CLOSE): Ending.CLOSING_EOF,
    (Ending.EOF_DRAINING, End.EOF): Ending.EOF_DRAINING,
    (Ending.EOF_DRAINING, End.SHUTDOWN): Ending.EOF_DRAINING,
    (Ending.EOF_DRAINING, End.CLOSE): Ending.CLOSING_EOF,
    (Ending.CLOSING, End.EOF): Ending.CLOSING_EOF,
    (Ending.CLOSING, End.SHUTDOWN): Ending.CLOSING,
    (Ending.CLOSING, End.CLOSE): Ending.CLOSING,
    (Ending.CLOSING_EOF, End.EOF): Ending.CLOSING_EOF,
    (Ending.CLOSING_EOF, End.SHUTDOWN): Ending.CLOSING_EOF,
    (Ending.CLOSING_EOF, End.CLOSE): Ending.CLOSING_EOF,
}

# ENDING keyed by trigger, then state, as NEXT is for TRANSITIONS.
NEXT_ENDING: Final[dict[End, dict[Ending, Ending]]] = {
    t: {e: dst for (e, trig), dst in ENDING.items() if trig is t} for t in End
}
# What each state means for reading (the session's hot path tests membership).
READING: Final = frozenset({Ending.OPEN, Ending.DRAINING, Ending.EOF, Ending.EOF_DRAINING})
EOF_SEEN: Final = frozenset({Ending.EOF, Ending.EOF_DRAINING, Ending.CLOSING_EOF})
DRAINING: Final = frozenset({Ending.DRAINING, Ending.EOF_DRAINING})


class Framing(enum.Enum):
    """How the command part reads the client's next bytes (``FRAMING``)."""

    __hash__ = object.__hash__

    LINES = "lines"  # every CRLF-ended line is a command
    SKIPPING = "skipping"  # the rest of an over-long line is dropped up to its CRLF


class Frame(enum.Enum):
    __hash__ = object.__hash__

    TOO_LONG = "line too long, refused"
    LINE_END = "its CRLF reached"


FRAMING: Final[dict[tuple[Framing, Frame], Framing]] = {
    (Framing.LINES, Frame.TOO_LONG): Framing.SKIPPING,
    (Framing.SKIPPING, Frame.LINE_END): Framing.LINES,
}
NEXT_FRAMING: Final[dict[Frame, dict[Framing, Framing]]] = {
    t: {f: dst for (f, trig), dst in FRAMING.items() if trig is t} for t in Frame
}


class Hello(enum.Enum):
    """Which commands the client may send next (``HELLO``): RFC 3207 §4.2 forgets
    the session's hello once TLS starts, so only a new EHLO/HELO opens it again."""

    __hash__ = object.__hash__

    ANY = "any command"  # as the mode allows
    FIRST = "hello first"  # only EHLO/HELO and the hello-free verbs


class Greet(enum.Enum):
    __hash__ = object.__hash__

    TLS_STARTED = "TLS started"
    ACCEPTED = "EHLO/HELO accepted"


HELLO: Final[dict[tuple[Hello, Greet], Hello]] = {
    (Hello.ANY, Greet.TLS_STARTED): Hello.FIRST,
    (Hello.ANY, Greet.ACCEPTED): Hello.ANY,
    (Hello.FIRST, Greet.ACCEPTED): Hello.ANY,
}
NEXT_HELLO: Final[dict[Greet, dict[Hello, Hello]]] = {
    t: {h: dst for (h, trig), dst in HELLO.items() if trig is t} for t in Greet
}


def framing(state: Framing, trigger: Frame) -> Framing:
    """FRAMING's next state (:class:`NotInTable` for a pair it does not have)."""
    try:
        return NEXT_FRAMING[trigger][state]
    except KeyError:
        raise NotInTable("FRAMING", state, trigger) from None


def hello(state: Hello, trigger: Greet) -> Hello:
    """HELLO's next state (:class:`NotInTable` for a pair it does not have)."""
    try:
        return NEXT_HELLO[trigger][state]
    except KeyError:
        raise NotInTable("HELLO", state, trigger) from None


def mermaid(table: Iterable[tuple[tuple[enum.Enum, enum.Enum], enum.Enum]]) -> str:
    """A table's ``items()`` as a Mermaid state diagram (for docs/architecture.md)."""
    lines = ["stateDiagram-v2"]
    for (src, trig), dst in table:
        lines.append(f"    {src.name} --> {dst.name}: {trig.value}")
    return "\n".join(lines)
