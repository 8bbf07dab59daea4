"""Playbook harness: drives a core Session against a scripted in-memory SMTP server.

The fake server answers each complete command it receives (or waits, with
``auto=False``, until the test releases replies), so a conversation can be replayed
with the client and server byte streams cut at any points and the outputs compared.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from smtpguard.core.actions import (
    Action,
    CloseClient,
    CloseServer,
    OpenServer,
    PolicyEvent,
    SetTimer,
    StartTls,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.events import (
    ClientData,
    ClientEof,
    Event,
    ServerClosed,
    ServerConnected,
    ServerData,
    Side,
    Start,
    TimerFired,
    TlsDone,
)
from smtpguard.core.policy import Policy
from smtpguard.core.session import Session

GREETING = b"220 mx.example.test ESMTP FakeMTA 1.0\r\n"


@dataclass
class FakeServer:
    """A minimal RFC 5321 server: answers per line, tracks DATA on the raw stream."""

    greeting: bytes = GREETING
    received: bytearray = field(default_factory=bytearray)
    messages: list[bytes] = field(default_factory=list)
    aborted: bool = False
    closed: bool = False
    refuse_data: bool = False
    tls_raw: bool = False  # after STARTTLS, take everything as opaque TLS bytes
    in_tls: bool = False
    xclient: list[bytes] = field(default_factory=list)
    _buf: bytearray = field(default_factory=bytearray)
    _in_data: bytearray | None = None
    _queue: int = 0

    def feed(self, data: bytes) -> bytes:
        self.received += data
        if self.in_tls and self.tls_raw:
            return b""
        self._buf += data
        out = bytearray()
        while True:
            if self._in_data is not None:
                end = (b"\r\n" + self._buf).find(b"\r\n.\r\n")
                if end < 0:
                    return bytes(out)
                msg = bytes(self._in_data) + bytes(self._buf[:end])
                del self._buf[: end + 3]
                self.messages.append(msg)
                self._in_data = None
                self._queue += 1
                out += b"250 2.0.0 Ok: queued as Q%d\r\n" % self._queue
                continue
            nl = self._buf.find(b"\n")
            if nl < 0:
                return bytes(out)
            line = bytes(self._buf[: nl + 1]).rstrip(b"\r\n")
            del self._buf[: nl + 1]
            out += self.answer(line)

    def answer(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"HELO":
            return b"250 mx.example.test\r\n"
        if verb == b"EHLO":
            return (
                b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
                b"250-CHUNKING\r\n250-XCLIENT NAME ADDR\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
            )
        if verb == b"MAIL":
            return b"250 2.1.0 Ok\r\n"
        if verb == b"RCPT":
            if b"unknown" in line:
                return b"550 5.1.1 User unknown\r\n"
            return b"250 2.1.5 Ok\r\n"
        if verb == b"DATA":
            if self.refuse_data:
                return b"554 5.5.1 Error: no valid recipients\r\n"
            self._in_data = bytearray()
            # what follows in the buffer is message data
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if line.upper().startswith(b"STARTTLS"):
            self.in_tls = True
            return b"220 2.0.0 Ready to start TLS\r\n"
        if line.upper().startswith(b"XCLIENT"):
            self.xclient.append(line)
            return b"220 mx.example.test ESMTP FakeMTA 1.0\r\n"
        if verb in (b"RSET", b"NOOP"):
            return b"250 2.0.0 Ok\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"502 5.5.2 Error: command not recognized\r\n"


@dataclass
class Run:
    """What one conversation produced."""

    client_out: bytearray = field(default_factory=bytearray)
    server_sent: bytearray = field(default_factory=bytearray)  # every server's replies
    servers: list[FakeServer] = field(default_factory=list)
    events: list[PolicyEvent] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    tls: list[str] = field(default_factory=list)
    client_closed: bool = False
    client_reset: bool = False
    timer: float | None = None

    @property
    def server(self) -> FakeServer:
        return self.servers[-1]

    def event_ids(self) -> list[str]:
        return [e.id for e in self.events]

    def replies(self) -> list[bytes]:
        return bytes(self.client_out).split(b"\r\n")[:-1]


class Harness:
    """Runs a Session with fake servers; ``auto`` servers answer at once."""

    instances: ClassVar[list[Harness]] = []  # created during the current test

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        server: FakeServer | None = None,
        auto: bool = True,
        connect_fails: bool = False,
        trace: bool = True,
        server_chunks: int = 0,
        peer: tuple[str, int] | None = None,
    ) -> None:
        self.policy = policy or Policy(hostname="gw.example.test")
        self.trace = trace
        self.peer = peer
        self.session = Session(self.policy, trace=trace, peer=peer)
        # Every event fed, with its time, and every action the session answered: the
        # playbook of this conversation, re-run re-cut by tests/core/conftest.py.
        self.events: list[tuple[Event, float]] = []
        self.actions: list[Action] = []
        Harness.instances.append(self)
        self.run = Run()
        self.auto = auto
        self.connect_fails = connect_fails
        self.template = server
        self.server_chunks = server_chunks
        self.pending: bytearray = bytearray()  # server output not yet delivered
        self.now = 0.0
        self.live = False

    # -- driving ---------------------------------------------------------
    def start(self) -> Harness:
        self._feed(Start())
        return self

    def client(self, data: bytes, cuts: Iterable[int] = ()) -> Harness:
        for part in _split(data, cuts):
            self._feed(ClientData(part))
        return self

    def client_eof(self) -> Harness:
        self._feed(ClientEof())
        return self

    def release(self) -> Harness:
        """Deliver the server output held back (``auto=False``)."""
        data, self.pending = bytes(self.pending), bytearray()
        if data:
            self._server_says(data)
        return self

    def server_says(self, data: bytes) -> Harness:
        self._server_says(data)
        return self

    def tls_started(self, side: str) -> Harness:
        self._feed(TlsDone(Side(side)))
        return self

    def server_drops(self) -> Harness:
        self.live = False
        self.run.server.closed = True
        self._feed(ServerClosed())
        return self

    def advance(self, seconds: float) -> Harness:
        self.now += seconds
        self._feed(TimerFired())
        return self

    def feed(self, event: Event) -> Harness:
        """Any event, as the shell would deliver it."""
        self._feed(event)
        return self

    def _feed(self, event: Event) -> None:
        self.events.append((event, self.now))
        actions = self.session.handle(event, self.now)
        self.actions += actions
        self._do(actions)

    # -- action execution ---------------------------------------------------
    def _server_says(self, data: bytes) -> None:
        if not self.live:
            return
        self.run.server_sent += data
        for part in _split(data, range(1, len(data)) if self.server_chunks else ()):
            self._feed(ServerData(part))

    def _do(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, ToClient):
                self.run.client_out += a.data
            elif isinstance(a, ToServer):
                assert self.live, "bytes sent to a closed upstream"
                self.pending += self.run.server.feed(bytes(a.data))
            elif isinstance(a, OpenServer):
                self._open()
            elif isinstance(a, CloseServer):
                if self.live:
                    self.run.server.closed = True
                    self.run.server.aborted = a.abort
                self.live = False
            elif isinstance(a, CloseClient):
                self.run.client_closed = True
                self.run.client_reset = a.reset
            elif isinstance(a, StartTls):
                self.run.tls.append(a.side)
            elif isinstance(a, SetTimer):
                self.run.timer = a.deadline
            elif isinstance(a, PolicyEvent):
                self.run.events.append(a)
            elif isinstance(a, Trace):
                self.run.traces.append(a)
        if self.auto and self.pending:
            self.release()  # the server answers after this batch, as on a real wire

    def _open(self) -> None:
        if self.connect_fails:
            self._feed(ServerClosed())
            return
        # each connection gets a fresh copy of the template (subclasses included)
        srv = copy.deepcopy(self.template) if self.template else FakeServer()
        self.run.servers.append(srv)
        self.live = True
        self._feed(ServerConnected())
        self._server_says(srv.greeting)


def _split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return [p for p in out if p]


def converse(script: bytes, cuts: Iterable[int] = (), **kw: object) -> Run:
    """Start a session, send ``script`` from the client cut at ``cuts``, then EOF."""
    h = Harness(**kw).start()  # type: ignore[arg-type]
    h.client(script, cuts)
    h.client_eof()
    return h.run
