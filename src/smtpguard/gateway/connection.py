"""One client session: two asyncio Protocols around a core :class:`Session`.

This module only moves bytes and executes the core's actions; it holds no protocol
logic. Flow control runs both ways: when the upstream's write buffer is full the
client is not read (a slow server never makes the gateway buffer a message), and when
the client's write buffer is full the upstream is not read. Bytes the core holds
unparsed (pipelined input waiting for a reply) also pause the client above a mark.
TCP_NODELAY is left to the event loop: asyncio and uvloop both set it on TCP
transports, which the one-byte-segment tests rely on.

Per-session memory is bounded whatever the client does, and one session cannot
starve the others on its worker: client bytes are fed to the core in slices of
``FEED_SLICE``; outside the DATA phase (where every line may make a reply) at most
``FEED_BUDGET`` bytes are fed per event-loop callback and the rest waits for the next
turn with the client paused. Nothing is fed while the client's own write buffer is
above its high mark (a client that sends commands without reading its replies stops
being read), so the gateway never queues more than about ``WRITE_HIGH`` of replies.

No exception skips the teardown: every entry point runs under :meth:`_guard`, which
logs the failure, resets both connections and releases the session's slot and
counts; ``connection_lost`` releases them in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from smtpguard import proxyproto
from smtpguard.core.actions import (
    Action,
    CloseClient,
    CloseServer,
    OpenServer,
    PolicyEvent,
    RateCheck,
    SetTimer,
    StartTls,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.dedupe import DedupeLookup, DedupeRecord
from smtpguard.core.events import (
    ClientData,
    ClientEof,
    DedupeAnswer,
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
from smtpguard.core.policy import Policy
from smtpguard.core.session import Phase, Session
from smtpguard.gateway.access import AccessControl, parse_ip
from smtpguard.gateway.metrics import Metrics
from smtpguard.gateway.tls import TlsContexts
from smtpguard.logs import ProtocolLog
from smtpguard.state.dedupe import Dedupe
from smtpguard.state.ratelimit import RateLimits

log = logging.getLogger("smtpguard.gateway")

TLS_HANDSHAKE_TIMEOUT: Final = 30.0
PROXY_HEADER_TIMEOUT: Final = 10.0  # seconds a load balancer has to send its PROXY header
# Held, unparsed client bytes above which the client is not read (pipelining bound).
BACKLOG_HIGH: Final = 64 * 1024
# Transport write buffer marks: big enough to stream a message without stalls.
WRITE_HIGH: Final = 1024 * 1024
WRITE_LOW: Final = 256 * 1024
# Client bytes fed to the core at a time, and per event-loop callback outside DATA.
FEED_SLICE: Final = 4 * 1024
FEED_BUDGET: Final = 16 * 1024
# Phases in which the core only scans and relays (no reply per line): fed whole.
_BULK: Final = frozenset({Phase.DATA, Phase.TUNNEL})
# Said to the client when the gateway itself fails (a bug): never a false 2xx.
INTERNAL_ERROR: Final = b"421 4.3.0 Gateway error, closing connection\r\n"


class GatewayView(Protocol):
    """What a connection uses of its gateway (:class:`smtpguard.gateway.server.Gateway`).

    Stated here so this module imports nothing of the server's: mypyc compiles it
    with the core (setup.py), and its analysis must not reach the configuration code.
    """

    loop: asyncio.AbstractEventLoop
    policy: Policy
    access: AccessControl
    dedupe: Dedupe | None
    rates: RateLimits | None
    metrics: Metrics
    protocol_log: ProtocolLog | None
    tls: TlsContexts | None
    upstream_proxy: str

    def next_session_id(self) -> str: ...
    def policy_for(self, peer_ip: str) -> Policy: ...
    def admit(self, conn: ClientConnection) -> bool | None: ...
    def release(self, conn: ClientConnection) -> None: ...
    def open_upstream(self, up: UpstreamConnection) -> None: ...
    def policy_event(self, sid: str, peer: str, ev: PolicyEvent) -> None: ...


class ClientConnection(asyncio.Protocol):
    """Accepted client connection; owns the session and its upstream."""

    def __init__(self, gateway: GatewayView, tls_listener: bool = False) -> None:
        self.gw = gateway
        self.loop = gateway.loop
        self.opened_at = self.loop.time()  # for the session's log line (sessionlog.py)
        self.sid = gateway.next_session_id()
        self.tls_listener = tls_listener  # accepted on an implicit-TLS port (465)
        self.session: Session | None = None  # once the client is known (after PROXY)
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamConnection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._sent_at: float | None = None  # when bytes last went upstream unanswered
        self._up_full = False  # upstream write buffer above its high mark
        self._client_full = False  # our write buffer towards the client above its mark
        self._reading = True
        self._done = False
        self._held = b""  # client bytes read but not yet fed to the core
        self._feed_handle: asyncio.Handle | None = None  # the next turn's feed
        self.peer = ""
        self.addr: tuple[str, int] | None = None  # the client (from PROXY if trusted)
        # The address the client connected to (from PROXY if trusted; else read when
        # first needed).
        self.local: tuple[str, int] | None = None
        self._proxy_buf: bytearray | None = None  # PROXY header being read
        self._plog: ProtocolLog | None = None  # the gateway's, when the session began
        self._metrics = gateway.metrics  # typed: a native call per reply once compiled

    # -- client transport callbacks --------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        try:
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
                self._proxy_buf = bytearray()
                self._timer = self.loop.call_later(
                    PROXY_HEADER_TIMEOUT, self._proxy_failed, "no PROXY header in time"
                )
                return
            self._begin(addr)
        except Exception as exc:
            self._crash(exc)

    def _begin(self, addr: tuple[str, int] | None) -> None:
        self.addr = addr
        self._plog = self.gw.protocol_log
        session = Session(
            self.gw.policy_for(addr[0]) if addr else self.gw.policy,
            trace=self._plog.traced if self._plog is not None else 0,
            peer=addr,
            client_tls=self.tls_listener,
        )
        self.session = session
        admitted = self.gw.admit(self)
        if admitted is None:
            return  # the shared store decides; the gateway calls admitted() then
        if not admitted:
            self._done = True  # refused: never registered, nothing to release
            return
        self.admitted()

    def admitted(self) -> None:
        """Start the admitted session: at once, or once the shared store said yes."""
        session = self.session
        if self._done or session is None:
            return
        if self._plog is not None:
            self._plog.connect(self.sid, self.peer)
        self._run(session.handle(Start(), self.loop.time()))

    def data_received(self, data: bytes) -> None:
        try:
            if self._proxy_buf is not None:
                self._proxy_header(data)
            elif not self._done:
                self._held = self._held + data if self._held else data
                self._feed()
        except Exception as exc:
            self._crash(exc)

    def _feed(self) -> None:
        """Feed held client bytes to the core: slice by slice, at most ``FEED_BUDGET``
        per turn outside DATA, and not while the client is not reading its replies."""
        self._feed_handle = None
        session = self.session
        budget = FEED_BUDGET
        while self._held and not self._client_full and not self._done and session is not None:
            held = self._held
            bulk = session.phase in _BULK
            if not bulk and budget <= 0:
                self._feed_handle = self.loop.call_soon(self._guarded_feed)
                break
            take = len(held)
            if not bulk:  # (not min() of three: a generic call once compiled)
                take = min(take, FEED_SLICE)
                take = min(take, budget)
            if take == len(held):
                chunk, self._held = held, b""
            else:
                chunk, self._held = held[:take], held[take:]
            if not bulk:
                budget -= take
            self._run(session.handle(ClientData(chunk), self.loop.time()))
        self._update_reading()

    def _guarded_feed(self) -> None:
        try:
            self._feed()
        except Exception as exc:
            self._crash(exc)

    def _proxy_header(self, data: bytes) -> None:
        assert self._proxy_buf is not None
        self._proxy_buf += data
        try:
            header = proxyproto.parse(bytes(self._proxy_buf))
        except proxyproto.ProxyError as exc:
            self._proxy_failed(str(exc))
            return
        if header is None:
            return
        rest = bytes(self._proxy_buf[header.length :])
        self._proxy_buf = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        addr = self.addr if header.local or header.source is None else header.source
        if addr is not None and not header.local:
            self.peer = f"{addr[0]}:{addr[1]}"
            self.local = header.dest
        self._begin(addr)
        if rest and self.transport is not None and not self.transport.is_closing():
            self.data_received(rest)  # (a refused client's transport is closing)

    def _proxy_failed(self, why: str) -> None:
        self._timer = None
        self._proxy_buf = None
        self._done = True
        self.gw.policy_event(
            self.sid,
            self.peer,
            PolicyEvent(
                "SG-PROXY-INVALID", f"connection from a load balancer refused: {why}", "drop"
            ),
        )
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        if self._proxy_buf is not None:  # a health check: connected, then closed
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._proxy_buf = None
            self._done = True
            return False  # nothing owed: close
        try:
            if self._done or self.session is None:
                return False
            if self._held:  # feed what was read first, whatever the write buffer says
                held, self._held = self._held, b""
                self._run(self.session.handle(ClientData(held), self.loop.time()))
            self._run(self.session.handle(ClientEof(), self.loop.time()))
        except Exception as exc:
            self._crash(exc)
            return False
        return True  # keep the write side open for owed replies

    def connection_lost(self, exc: Exception | None) -> None:
        if self._proxy_buf is not None or self.session is None:  # never got a session
            self._proxy_buf = None
            self._done = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        try:
            if not self._done and not self.session.closed:
                self._run(self.session.handle(ClientEof(), self.loop.time()))
        except Exception as err:
            self._log_crash(err)
        finally:
            self.transport = None
            self._teardown(abort_upstream=True)

    def pause_writing(self) -> None:
        self._client_full = True
        if self.upstream is not None:
            self.upstream.pause()

    def resume_writing(self) -> None:
        self._client_full = False
        if self.upstream is not None:
            self.upstream.resume()
        if self._held and self._feed_handle is None and not self._done:
            self._feed_handle = self.loop.call_soon(self._guarded_feed)
        else:
            self._update_reading()

    # -- upstream callbacks --------------------------------------------------------
    def upstream_proxy_header(self) -> bytes:
        """The PROXY header the upstream gets first, if configured (the real client)."""
        version = self.gw.upstream_proxy
        if version == "off" or self.addr is None:
            return b""
        if self.local is None and self.transport is not None:
            self.local = _address(self.transport.get_extra_info("sockname"))
        if self.local is None:
            return b""
        build = proxyproto.build_v1 if version == "v1" else proxyproto.build_v2
        return build(self.addr, self.local)

    def upstream_made(self, up: UpstreamConnection) -> None:
        if up is self.upstream and self.session is not None:
            try:
                self._run(self.session.handle(ServerConnected(), self.loop.time()))
            except Exception as exc:
                self._crash(exc)

    def upstream_data(self, up: UpstreamConnection, data: bytes) -> None:
        if up is self.upstream and self.session is not None:
            try:
                if self._sent_at is not None:  # first bytes after a write: reply latency
                    self._metrics.reply_latency(self.loop.time() - self._sent_at)
                    self._sent_at = None
                self._run(self.session.handle(ServerData(data), self.loop.time()))
                self._update_reading()
            except Exception as exc:
                self._crash(exc)

    def upstream_lost(self, up: UpstreamConnection) -> None:
        if up is self.upstream and self.session is not None:
            try:
                if up.transport is not None:  # a connect that failed is counted as such
                    self.gw.metrics.upstream_error("lost")
                self.upstream = None
                self._up_full = False
                self._run(self.session.handle(ServerClosed(), self.loop.time()))
                self._update_reading()
            except Exception as exc:
                self._crash(exc)

    def upstream_full(self, up: UpstreamConnection, full: bool) -> None:
        if up is self.upstream:
            self._up_full = full
            self._update_reading()

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
                self._sent_at = self.loop.time()

    def _do_to_client(self, a: ToClient) -> None:
        if self.transport is not None:
            self.transport.write(a.data)

    def _do_trace(self, a: Trace) -> None:
        if self._plog is not None:
            self._plog.trace(self.sid, a)

    def _do_set_timer(self, a: SetTimer) -> None:
        self._set_timer(a.deadline)

    def _do_policy_event(self, a: PolicyEvent) -> None:
        self.gw.policy_event(self.sid, self.peer, a)

    def _do_open_server(self, a: OpenServer) -> None:
        self._open_upstream()

    def _do_close_server(self, a: CloseServer) -> None:
        self._close_upstream(a.abort)

    def _do_close_client(self, a: CloseClient) -> None:
        self._close_client(a.reset)

    def _do_dedupe_lookup(self, a: DedupeLookup) -> None:
        dedupe = self.gw.dedupe
        if dedupe is not None:
            dedupe.lookup(self.gw, self, a.key)  # answers with dedupe_answer
        else:  # no store (dedupe turned on by a reload): relayed as usual
            self.loop.call_soon(self.dedupe_answer, None)

    def _do_dedupe_record(self, a: DedupeRecord) -> None:
        if self.gw.dedupe is not None:
            self.gw.dedupe.record(self.gw, self, a.key, a.queue_id)

    def dedupe_answer(self, queue_id: str | None) -> None:
        """The store's answer to the core's DedupeLookup (state/dedupe.py)."""
        session = self.session
        if not self._done and session is not None:
            self._run(session.handle(DedupeAnswer(queue_id), self.loop.time()))
            self._update_reading()

    def _do_rate_check(self, a: RateCheck) -> None:
        rates = self.gw.rates
        if rates is not None:
            rates.check(self.gw, self, a)  # answers with rate_answer
        else:  # no store (cannot happen: set_policy): allowed, as when it fails
            self.loop.call_soon(self.rate_answer, None)

    def rate_answer(self, allowed: bool | None) -> None:
        """The store's count for the core's RateCheck (state/ratelimit.py)."""
        session = self.session
        if self._done or session is None:
            return
        try:
            self._run(session.handle(RateAnswer(allowed), self.loop.time()))
            self._update_reading()
        except Exception as exc:
            self._crash(exc)

    def _do_start_tls(self, a: StartTls) -> None:
        task = self.loop.create_task(self._start_tls(a.side))
        task.add_done_callback(_log_failure)

    async def _start_tls(self, side: str) -> None:
        """Upgrade one side in place; the core hears ``tls_started``/``tls_failed``."""
        tls = self.gw.tls
        try:
            if tls is None:
                raise ssl.SSLError("no TLS configuration")
            if side == "client":
                if tls.server is None or self.transport is None:
                    raise ssl.SSLError("the gateway has no certificate")
                new = cast(
                    asyncio.Transport,
                    await self.loop.start_tls(
                        self.transport,
                        self,
                        tls.server,
                        server_side=True,
                        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                    ),
                )
                self.transport = new
                # The new transport starts with default limits and reading: carry over.
                new.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
                self._client_full = False
                if not self._reading:
                    new.pause_reading()
            else:
                up = self.upstream
                if up is None or up.transport is None:
                    raise ConnectionError("no upstream connection")
                new = cast(
                    asyncio.Transport,
                    await self.loop.start_tls(
                        up.transport,
                        up,
                        tls.client,
                        server_hostname=tls.upstream_hostname,
                        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                    ),
                )
                up.upgraded(new)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("%s TLS handshake with the %s failed: %s", self.sid, side, exc)
            if not self._done and self.session is not None:
                self._run(self.session.handle(TlsFailed(Side(side)), self.loop.time()))
            return
        if not self._done and self.session is not None:
            self._run(self.session.handle(TlsDone(Side(side)), self.loop.time()))
            self._update_reading()

    def _open_upstream(self) -> None:
        self._close_upstream(abort=True)
        up = UpstreamConnection(self)
        self.upstream = up
        self.gw.open_upstream(up)

    def _close_upstream(self, abort: bool) -> None:
        up, self.upstream = self.upstream, None
        self._up_full = False
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
        if deadline is None or self._done:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._done or self.session is None:
            return
        try:
            if self.loop.time() < deadline:
                self._timer = self.loop.call_at(deadline, self._on_timer)
                return
            self._run(self.session.handle(TimerFired(), self.loop.time()))
        except Exception as exc:
            self._crash(exc)

    def shutdown(self) -> None:
        """Graceful drain requested by the gateway."""
        if not self._done and self.session is not None:
            try:
                self._run(self.session.handle(Shutdown(), self.loop.time()))
            except Exception as exc:
                self._crash(exc)

    def abort(self) -> None:
        """End of the drain grace: reset the client and free the session now."""
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort()
        self._teardown(abort_upstream=True)

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self._done or self.session is None:
            return
        want = (
            not self._up_full
            and not self._client_full
            and not self._held
            and self.session.client_backlog <= BACKLOG_HIGH
        )
        if want != self._reading:
            self._reading = want
            if want:
                t.resume_reading()
            else:
                t.pause_reading()

    def _teardown(self, abort_upstream: bool) -> None:
        if self._done:
            return
        self._done = True
        self._held = b""
        if self._feed_handle is not None:
            self._feed_handle.cancel()
            self._feed_handle = None
        try:
            self._set_timer(None)
            self._close_upstream(abort_upstream)
        finally:
            self.gw.release(self)


_HANDLERS: dict[type, Callable[[ClientConnection, Any], None]] = {
    ToServer: ClientConnection._do_to_server,
    ToClient: ClientConnection._do_to_client,
    Trace: ClientConnection._do_trace,
    SetTimer: ClientConnection._do_set_timer,
    PolicyEvent: ClientConnection._do_policy_event,
    OpenServer: ClientConnection._do_open_server,
    CloseServer: ClientConnection._do_close_server,
    CloseClient: ClientConnection._do_close_client,
    StartTls: ClientConnection._do_start_tls,
    DedupeLookup: ClientConnection._do_dedupe_lookup,
    DedupeRecord: ClientConnection._do_dedupe_record,
    RateCheck: ClientConnection._do_rate_check,
}


def _address(info: object) -> tuple[str, int] | None:
    """(host, port) of a socket address from ``get_extra_info``; None if not IP."""
    if isinstance(info, tuple):
        return str(info[0]), int(info[1])
    return None


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("TLS task failed", exc_info=task.exception())


class UpstreamConnection(asyncio.Protocol):
    """The gateway's connection to the real mail server for one client session.

    Bytes written before the connection exists are kept and sent first once it does
    (after the PROXY header); ``connecting`` is the gateway's connect task, cancelled
    when the session gives the connection up.
    """

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Future[Any] | None = None
        self._closed = False
        self._paused = False  # the client asked us not to read the server
        self._full = False  # told the client our write side is full
        self._early: list[bytes] | None = None  # written before the connection is up
        self._early_size = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        if self._closed:
            transport.abort()
            return
        self.transport = transport
        self.connecting = None
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        if self._paused:
            transport.pause_reading()
        header = self.client.upstream_proxy_header()
        if header:
            transport.write(header)
        early, self._early, self._early_size = self._early, None, 0
        was_full, self._full = self._full, False
        for data in early or ():
            transport.write(data)
        if was_full and transport.get_write_buffer_size() <= WRITE_HIGH:
            self.client.upstream_full(self, False)
        self.client.upstream_made(self)

    def upgraded(self, transport: asyncio.Transport) -> None:
        """STARTTLS towards the server succeeded: the same limits and pause apply."""
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        if self._paused:
            transport.pause_reading()

    def connect_failed(self) -> None:
        self.connecting = None
        if not self._closed:
            self._closed = True
            self.client.upstream_lost(self)

    def data_received(self, data: bytes) -> None:
        self.client.upstream_data(self, data)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
            self.client.upstream_lost(self)

    def pause_writing(self) -> None:
        self.client.upstream_full(self, True)

    def resume_writing(self) -> None:
        self.client.upstream_full(self, False)

    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            return
        if self.transport is None:
            if self._early is None:
                self._early = []
            self._early.append(bytes(data))
            self._early_size += len(data)
            if self._early_size > WRITE_HIGH and not self._full:
                self._full = True
                self.client.upstream_full(self, True)
            return
        self.transport.write(data)

    def pause(self) -> None:
        self._paused = True
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def close(self, abort: bool) -> None:
        """Close on the core's request: no callbacks into the session after this."""
        self._closed = True
        self._early = None
        task, self.connecting = self.connecting, None
        if task is not None and not task.done():
            task.cancel()
        t = self.transport
        if t is not None and not t.is_closing():
            if abort:
                t.abort()
            else:
                t.close()
