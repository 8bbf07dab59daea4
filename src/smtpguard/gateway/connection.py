"""One client session: the client's asyncio Protocol around a core :class:`Session`.

This module only moves bytes and executes the core's actions; it holds no protocol
logic. Beside it: the upstream's own protocol (``upstreamconn.py``), the PROXY header
reader (``proxyreader.py``), the STARTTLS upgrade (``tls.py``), and the actions handed
on to the gateway, with what a connection uses of the gateway (``handoff.py``).
TCP_NODELAY is left to the event loop: asyncio and uvloop both set it on TCP
transports, which the one-byte-segment tests rely on.

Theory of operation. A :class:`ClientConnection` goes through its own phases
(:class:`Stage`): ``PROXY`` while a trusted load balancer's header is read
(:class:`~smtpguard.gateway.proxyreader.ProxyReader`), ``ADMISSION`` while the
gateway (or the shared store) decides whether the session may start, ``OPEN`` while
the session runs, ``CLOSED`` once it is torn down, refused or never started.

**One door.** Every event for the core (client bytes and EOF, the upstream's
connect, bytes and loss, the timer, the admission, the store's answers, a TLS
handshake's outcome, a drain) passes through :meth:`ClientConnection._dispatch`,
which reads the clock, calls ``Session.handle``, carries out the actions, updates
flow control and, on any exception, tears the session down: the failure is logged
(``session failed, connection reset``), the client gets ``421 4.3.0`` if anything
can still be written, both connections are closed and the gateway releases the
session exactly once. The shell's own code outside the door (accepting, reading
the PROXY header, feeding) runs under the same teardown; ``connection_lost``
releases in a ``finally``.

**Flow control** (:class:`~smtpguard.gateway.flow.Flow`) runs both ways: when the
upstream's write buffer is full the client is not read, and when the client's write
buffer is full the upstream is not read; client bytes are fed to the core in slices,
within a budget per event-loop turn outside DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any, Final, cast

from smtpguard import proxyproto
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
    Cut,
    DedupeAnswer,
    Event,
    PassAnswer,
    RateAnswer,
    ServerClosed,
    ServerConnected,
    ServerData,
    Shutdown,
    Side,
    Start,
    TimerFired,
    TlsDone,
    TlsFailed,
)
from smtpguard.core.phases import Upstream
from smtpguard.core.session import Phase, Session
from smtpguard.gateway.access import parse_ip
from smtpguard.gateway.flow import WRITE_HIGH, WRITE_LOW, Flow
from smtpguard.gateway.handoff import HANDOFFS, GatewayView
from smtpguard.gateway.proxyreader import ProxyError, ProxyReader
from smtpguard.gateway.tls import secure
from smtpguard.gateway.upstreamconn import ClientSide, UpstreamConnection
from smtpguard.logs import ProtocolLog
from smtpguard.proxyproto import ProxyVersion

__all__ = ["INTERNAL_ERROR", "ClientConnection", "Stage"]

log = logging.getLogger("smtpguard.gateway")

PROXY_HEADER_TIMEOUT: Final = 10.0  # seconds a load balancer has to send its PROXY header
# Phases in which the core only scans and relays (no reply per line): fed whole.
_BULK: Final = frozenset({Phase.DATA, Phase.TUNNEL})
# Said to the client when the gateway itself fails (a bug): never a false 2xx.
INTERNAL_ERROR: Final = b"421 4.3.0 Gateway error, closing connection\r\n"


class Stage(enum.Enum):
    """The connection's own phase (the session's is the core's :class:`Phase`)."""

    NEW = "new"  # accepted, not yet looked at
    PROXY = "proxy"  # reading a trusted load balancer's PROXY header
    ADMISSION = "admission"  # the session exists; the gateway or its store decides
    OPEN = "open"  # the session runs: events go through the door
    CLOSED = "closed"  # torn down, refused, or never started


class ClientConnection(asyncio.Protocol, ClientSide):
    """Accepted client connection; owns the session and its upstream. (ClientSide:
    what its upstream connection calls, named so that those calls are native.)"""

    def __init__(self, gateway: GatewayView[ClientConnection], tls_listener: bool = False) -> None:
        self.gw = gateway
        self.loop = gateway.loop
        # The clock every event is stamped with (a callable, so a test can stop it).
        self.clock: Callable[[], float] = self.loop.time
        self.opened_at = self.clock()  # for the session's log line (sessionlog.py)
        self.sid = gateway.next_session_id()
        self.tls_listener = tls_listener  # accepted on an implicit-TLS port (465)
        self.stage = Stage.NEW
        self.session: Session | None = None  # once the client is known (after PROXY)
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamConnection | None = None
        # The upstream servers this connection round tried and that failed before
        # their greeting (the gateway picks another); the server of the last one.
        self.tried: list[tuple[str, int]] = []
        self.target: tuple[str, int] | None = None
        self.target_at = 0.0
        self.flow = Flow()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._sent_at: float | None = None  # when bytes last went upstream unanswered
        self._lost = False  # the upstream closed on us: an error unless the session parked it
        self._feed_handle: asyncio.Handle | None = None  # the next turn's feed
        self.peer = ""
        self.addr: tuple[str, int] | None = None  # the client (from PROXY if trusted)
        # The address the client connected to (from PROXY if trusted; else read when
        # first needed).
        self.local: tuple[str, int] | None = None
        self._proxy: ProxyReader | None = None  # in Stage.PROXY
        self._plog: ProtocolLog | None = None  # the gateway's, when the session began
        self._metrics = gateway.metrics  # typed: a native call per reply once compiled

    # -- the one door ------------------------------------------------------------------
    def _dispatch(self, event: Event) -> bool:
        """Feed one event to the session and carry out what it says; on any exception
        tear everything down. False if the session failed here."""
        session = self.session
        if self.stage is not Stage.OPEN or session is None:
            return True
        try:
            now = self.clock()
            if not isinstance(event, ClientData) and not self._before(event, now):
                return True
            self._run(session.handle(event, now))
            if not isinstance(event, (ClientData, ClientEof)):  # the feed does its own
                self._update_reading()
                if self._lost:  # not an error when the server closed an idle session
                    self._lost = False
                    if session.upstream is not Upstream.PARKED:
                        self.gw.metrics.upstream_error("lost")
        except Exception as exc:
            self._crash(exc)
            return False
        return True

    def _before(self, event: Event, now: float) -> bool:
        """The shell's own bookkeeping for an event; False if it is not for the
        session after all (a timer that fired early is re-armed)."""
        if isinstance(event, ServerData):
            if self._sent_at is not None:  # first bytes after a write: reply latency
                self._metrics.reply_latency(now - self._sent_at)
                self._sent_at = None
        elif isinstance(event, TimerFired):
            deadline = self._deadline
            if deadline is None:
                return False
            if now < deadline:
                self._timer = self.loop.call_at(deadline, self._on_timer)
                return False
        elif isinstance(event, ServerClosed):
            up, self.upstream = self.upstream, None
            self.flow.up_full = False
            # (a failed connect counts as such)
            self._lost = up is not None and up.transport is not None
        elif isinstance(event, Start) and self._plog is not None:
            self._plog.connect(self.sid, self.peer)
        return True

    def _guarded_feed(self) -> None:
        """The feed scheduled for a later turn: outside the door, the same teardown."""
        try:
            self._feed()
        except Exception as exc:
            self._crash(exc)

    # -- client transport callbacks --------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        try:
            self._accept()
        except Exception as exc:
            self._crash(exc)

    def _accept(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        addr = _address(peer)
        self.addr = addr  # replaced by the PROXY header's source, if trusted
        # self.local: read from the socket only if a PROXY header for the upstream
        # needs it (a system call per session otherwise).
        access = self.gw.access.policy
        if addr is not None and access.proxy_from and access.expects_proxy(parse_ip(addr[0])):
            # A trusted load balancer: the real client is in the PROXY header first.
            self.stage = Stage.PROXY
            self._proxy = ProxyReader()
            self._timer = self.loop.call_later(
                PROXY_HEADER_TIMEOUT, self._proxy_failed, "no PROXY header in time"
            )
            return
        self._begin(addr)

    def _begin(self, addr: tuple[str, int] | None) -> None:
        self.addr = addr
        self._plog = self.gw.protocol_log
        self.session = Session(
            self.gw.policy_for(addr[0]) if addr else self.gw.policy,
            trace=self._plog.traced if self._plog is not None else 0,
            peer=addr,
            client_tls=self.tls_listener,
        )
        self.stage = Stage.ADMISSION
        admitted = self.gw.admit(self)
        if admitted is None:
            return  # the shared store decides; the gateway calls admitted() then
        if not admitted:
            self.stage = Stage.CLOSED  # refused: never registered, nothing to release
            return
        self.admitted()

    def admitted(self) -> None:
        """Start the admitted session: at once, or once the shared store said yes."""
        if self.stage is not Stage.ADMISSION:
            return
        self.stage = Stage.OPEN
        if not self._dispatch(Start()):
            return
        if self.flow.held:  # read while the store decided
            self._guarded_feed()

    def data_received(self, data: bytes) -> None:
        stage = self.stage
        try:
            if stage is Stage.OPEN:
                self.flow.hold(data)
                self._feed()
            elif stage is Stage.ADMISSION:
                self.flow.hold(data)  # fed once the session starts
            elif stage is Stage.PROXY:
                self._proxy_data(data)
        except Exception as exc:
            self._crash(exc)

    def _feed(self) -> None:
        """Feed held client bytes to the core as :class:`Flow` allows; what this
        turn's budget kept back waits for the next turn."""
        self._feed_handle = None
        flow = self.flow
        flow.new_turn()
        session = self.session
        while self.stage is Stage.OPEN and session is not None:
            chunk = flow.take(session.phase in _BULK)
            if not chunk:
                break
            self._dispatch(ClientData(chunk))
        if self.stage is Stage.OPEN:
            if flow.next_turn:
                self._feed_handle = self.loop.call_soon(self._guarded_feed)
            self._update_reading()

    def _proxy_data(self, data: bytes) -> None:
        reader = self._proxy
        assert reader is not None
        try:
            header = reader.feed(data)
        except ProxyError as exc:
            self._proxy_failed(str(exc))
            return
        if header is None:
            return
        self._proxy = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        addr = self.addr if header.local or header.source is None else header.source
        if addr is not None and not header.local:
            self.peer = f"{addr[0]}:{addr[1]}"
            self.local = header.dest
        self._begin(addr)
        if reader.rest:
            self.data_received(reader.rest)  # (dropped if the client was refused)

    def _proxy_failed(self, why: str) -> None:
        self._timer = None
        self.gw.policy_event(
            self.sid,
            self.peer,
            PolicyEvent(
                "SG-PROXY-INVALID", f"connection from a load balancer refused: {why}", "drop"
            ),
        )
        if self.transport is not None:
            self.transport.abort()
        self._teardown(abort_upstream=True)

    def eof_received(self) -> bool:
        if self.stage is not Stage.OPEN:
            # A health check's EOF, or a client gone before its greeting: nothing is
            # owed (a store still deciding hears of it through the release).
            self._teardown(abort_upstream=True)
            return False
        # True: the write side stays open for owed replies.
        held = self.flow.take_all()  # what was read first, whatever the write buffer says
        if held and not self._dispatch(ClientData(held)):
            return False
        return self._dispatch(ClientEof())

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            session = self.session
            if self.stage is Stage.OPEN and session is not None and not session.closed:
                self._dispatch(ClientEof())
        finally:
            self.transport = None
            self._teardown(abort_upstream=True)

    def pause_writing(self) -> None:
        self.flow.client_full = True
        if self.upstream is not None:
            self.upstream.pause()

    def resume_writing(self) -> None:
        self.flow.client_full = False
        if self.upstream is not None:
            self.upstream.resume()
        if self.flow.held and self._feed_handle is None and self.stage is Stage.OPEN:
            self._feed_handle = self.loop.call_soon(self._guarded_feed)
        else:
            self._update_reading()

    # -- upstream callbacks --------------------------------------------------------
    def upstream_proxy_header(self) -> bytes:
        """The PROXY header the upstream gets first, if configured (the real client)."""
        version = self.gw.upstream_proxy
        if version is ProxyVersion.OFF or self.addr is None:
            return b""
        if self.local is None and self.transport is not None:
            self.local = _address(self.transport.get_extra_info("sockname"))
        if self.local is None:
            return b""
        build = proxyproto.build_v1 if version is ProxyVersion.V1 else proxyproto.build_v2
        return build(self.addr, self.local)

    def upstream_made(self, up: UpstreamConnection) -> None:
        if up is self.upstream:
            self._dispatch(ServerConnected())

    def upstream_data(self, up: UpstreamConnection, data: bytes) -> None:
        if up is self.upstream:
            self._dispatch(ServerData(data))

    def upstream_lost(self, up: UpstreamConnection) -> None:
        if up is self.upstream:
            self._dispatch(ServerClosed())

    def upstream_full(self, up: UpstreamConnection, full: bool) -> None:
        if up is self.upstream:
            self.flow.up_full = full
            self._update_reading()

    # -- the store's answers, the timer, the drain -----------------------------------------
    def dedupe_answer(self, queue_id: str | None) -> None:
        """The store's answer to the core's DedupeLookup (state/dedupe.py)."""
        self._dispatch(DedupeAnswer(queue_id))

    def rate_answer(self, allowed: bool | None) -> None:
        """The store's count for the core's RateCheck (state/ratelimit.py)."""
        self._dispatch(RateAnswer(allowed))

    def pass_answer(self, passed: bool) -> None:
        """The store's answer to the core's PassLookup (state/passes.py)."""
        self._dispatch(PassAnswer(passed))

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch(TimerFired())

    def shutdown(self) -> None:
        """Graceful drain requested by the gateway."""
        self._dispatch(Shutdown())

    def cut(self) -> None:
        """The drain cut short: the core answers what is still owed with 421 4.3.2
        and closes both sides (the reply is flushed before the client's close)."""
        self._dispatch(Cut())

    def abort(self) -> None:
        """A cut session still not closed: reset the client and free it now."""
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort()
        self._teardown(abort_upstream=True)

    # -- failures --------------------------------------------------------------------
    def _log_crash(self, exc: BaseException) -> None:
        log.error("%s %s session failed, connection reset: %r", self.sid, self.peer, exc)
        log.debug("%s traceback", self.sid, exc_info=exc)

    def _crash(self, exc: BaseException) -> None:
        """A bug in the shell or the core: reset both sides and free everything the
        session holds. The client gets a 421 if anything can still be written."""
        self._log_crash(exc)
        t = self.transport
        if t is not None and not t.is_closing():
            with contextlib.suppress(Exception):
                t.write(INTERNAL_ERROR)
            with contextlib.suppress(Exception):
                t.close()
        try:
            self._teardown(abort_upstream=True)
        except Exception as err:  # the gateway's bookkeeping itself failed
            log.error("%s teardown failed: %r", self.sid, err)

    def _teardown(self, abort_upstream: bool) -> None:
        """The one way to CLOSED: timers, held bytes and the upstream go, and the
        gateway releases a session it may have counted, exactly once."""
        stage = self.stage
        if stage is Stage.CLOSED:
            return
        self.stage = Stage.CLOSED
        self._proxy = None
        self.flow.held = b""
        if self._feed_handle is not None:
            self._feed_handle.cancel()
            self._feed_handle = None
        try:
            self._set_timer(None)
            self._close_upstream(abort_upstream)
        finally:
            if stage is Stage.ADMISSION or stage is Stage.OPEN:
                self.gw.release(self)

    # -- executing the core's actions ------------------------------------------------
    def _run(self, actions: list[Action]) -> None:
        # The frequent actions first, called directly (native calls once compiled).
        for a in actions:
            if isinstance(a, ToClient):
                if self.transport is not None:
                    self.transport.write(a.data)
            elif isinstance(a, ToServer):
                self._do_to_server(a)
            elif isinstance(a, Trace):
                if self._plog is not None:
                    self._plog.trace(self.sid, a)
            elif isinstance(a, SetTimer):
                self._set_timer(a.deadline)
            else:
                _HANDLERS[type(a)](self, a)

    def _do_to_server(self, a: ToServer) -> None:
        if self.upstream is not None:
            self.upstream.write(a.data)
            if self._sent_at is None:
                self._sent_at = self.clock()

    def _do_open_server(self, a: OpenServer) -> None:
        self._open_upstream()

    def _do_close_server(self, a: CloseServer) -> None:
        self._close_upstream(a.abort)

    def _do_close_client(self, a: CloseClient) -> None:
        self._close_client(a.reset)

    def _do_start_tls(self, a: StartTls) -> None:
        task = self.loop.create_task(self._start_tls(a.side))
        task.add_done_callback(_log_failure)

    async def _start_tls(self, side: str) -> None:
        """Upgrade one side in place; the core hears ``TlsDone`` or ``TlsFailed``."""
        try:
            await self._handshake(side)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("%s TLS handshake with the %s failed: %s", self.sid, side, exc)
            self._dispatch(TlsFailed(Side(side)))
            return
        except Exception as exc:  # a bug: the same teardown as at the door
            if self.stage is Stage.OPEN:
                self._crash(exc)
            return
        self._dispatch(TlsDone(Side(side)))

    async def _handshake(self, side: str) -> None:
        tls = self.gw.tls
        if tls is None:
            raise ssl.SSLError("no TLS configuration")
        if side == "client":
            if tls.server is None or self.transport is None:
                raise ssl.SSLError("the gateway has no certificate")
            new = await secure(self.loop, self.transport, self, tls.server, server_side=True)
            self.transport = new
            # The new transport starts reading: a paused client stays paused.
            self.flow.client_full = False
            if not self.flow.reading:
                new.pause_reading()
        else:
            up = self.upstream
            if up is None:
                raise ConnectionError("no upstream connection")
            await up.start_tls(self.loop, tls)

    def _open_upstream(self) -> None:
        self._close_upstream(abort=True)
        up = UpstreamConnection(self)
        self.upstream = up
        # The greeting time is measured with perf_counter: the loop's clock (uvloop:
        # libuv's, in milliseconds, cached per turn) reads a loopback greeting as 0.
        self.target_at = time.perf_counter()
        self.gw.open_upstream(up)  # picks the server: up.target (None: none left)
        self.target = up.target

    def _close_upstream(self, abort: bool) -> None:
        up, self.upstream = self.upstream, None
        self.flow.up_full = False
        if up is not None:
            up.close(abort)

    def _close_client(self, reset: bool) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            if reset:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                t.abort()
            else:
                t.close()
        self._teardown(abort_upstream=False)

    def _set_timer(self, deadline: float | None) -> None:
        # Deadlines mostly move later (every command pushes the idle timeout), so the
        # armed handle is kept when it fires no later than needed and re-armed then.
        self._deadline = deadline
        if deadline is None or self.stage is Stage.CLOSED:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _update_reading(self) -> None:
        t = self.transport
        session = self.session
        if t is None or self.stage is not Stage.OPEN or session is None:
            return
        flow = self.flow
        if flow.update_reading(session.client_backlog):
            if flow.reading:
                t.resume_reading()
            else:
                t.pause_reading()


# The other actions: those that act on the connection's own transports, and those
# handed on to the gateway (handoff.py).
_HANDLERS: dict[type, Callable[[ClientConnection, Any], None]] = {
    OpenServer: ClientConnection._do_open_server,
    CloseServer: ClientConnection._do_close_server,
    CloseClient: ClientConnection._do_close_client,
    StartTls: ClientConnection._do_start_tls,
    **HANDOFFS,
}


def _address(info: object) -> tuple[str, int] | None:
    """(host, port) of a socket address from ``get_extra_info``; None if not IP."""
    if isinstance(info, tuple):
        return str(info[0]), int(info[1])
    return None


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("TLS task failed", exc_info=task.exception())
