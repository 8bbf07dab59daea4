"""The connection shell alone: a real Gateway and core session, fake transports.

Every path of the shell is driven by hand here: greeting and relay, a PROXY header
cut short by EOF, an exception anywhere in a session (teardown and release always
run), upstream connects that are abandoned or outlive a drain, bytes written before
the upstream exists, STARTTLS carrying write limits and the paused state over, and
backpressure on the gateway's own replies (bounded memory, bounded work per read).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from smtpguard.core.actions import (
    TRACE_ALL,
    Direction,
    PolicyEvent,
    SetTimer,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.policy import Policy
from smtpguard.gateway import connection as conn_mod
from smtpguard.gateway import flow as flow_mod
from smtpguard.gateway.access import AccessPolicy
from smtpguard.gateway.connection import ClientConnection
from smtpguard.gateway.metrics import Metrics
from smtpguard.gateway.server import Gateway, GatewayConfig
from smtpguard.gateway.tls import TlsContexts
from smtpguard.gateway.upstreamconn import UpstreamConnection
from smtpguard.proxyproto import ProxyVersion

CLIENT = ("192.0.2.10", 40000)


class FakeTransport(asyncio.Transport):
    """Records writes; optionally models a write buffer that only a "drain" empties,
    calling the protocol's pause_writing/resume_writing as a real transport does."""

    def __init__(self, protocol: asyncio.Protocol, peer: tuple[str, int] = CLIENT) -> None:
        super().__init__()
        self.protocol = protocol
        self.peer = peer
        self.written = bytearray()
        self.buffered = 0
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.limits_set: tuple[int, int] | None = None
        self.model_buffer = False
        self.write_paused = False
        self.reading = True
        self.closed = False
        self.aborted = False
        self.fail_close = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 25)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        assert high is not None and low is not None
        self.high, self.low = high, low
        self.limits_set = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data
        if self.model_buffer:
            self.buffered += len(data)
            if self.buffered > self.high and not self.write_paused:
                self.write_paused = True
                self.protocol.pause_writing()

    def drain(self) -> None:
        """The peer read everything we had buffered."""
        self.buffered = 0
        if self.write_paused:
            self.write_paused = False
            self.protocol.resume_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if self.fail_close:
            raise RuntimeError("close failed")
        self.closed = True

    def abort(self) -> None:
        if self.fail_close:
            raise RuntimeError("abort failed")
        self.closed = self.aborted = True


class RaisingLog:
    """A protocol log that raises when a chosen client line is traced."""

    traced = TRACE_ALL

    def __init__(self, poison: str) -> None:
        self.poison = poison

    def connect(self, sid: str, peer: str) -> None:
        pass

    def trace(self, sid: str, tr: Trace) -> None:
        if tr.line == self.poison:
            raise RuntimeError("log failed")

    def policy(self, sid: str, ev: PolicyEvent) -> None:
        pass

    def disconnect(self, sid: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def reopen(self) -> str | None:
        return None


class _Gateway(Gateway):
    """A gateway of the tests' own: its methods can be replaced on the instance (the
    Gateway class itself is compiled, and compiled instances have no ``__dict__``)."""


class Harness:
    """A Gateway whose upstream connects are captured instead of made."""

    def __init__(
        self, access: AccessPolicy | None = None, cls: type[_Gateway] | None = None, **gw: Any
    ) -> None:
        self.gw = (cls or _Gateway)(GatewayConfig(**gw), Policy(), access=access)
        self.upstreams: list[UpstreamConnection] = []
        real_open = self.gw.open_upstream

        def capture(up: UpstreamConnection) -> None:
            self.upstreams.append(up)

        self.real_open = real_open
        self.gw.open_upstream = capture  # type: ignore[method-assign]

    def client(self, peer: tuple[str, int] = CLIENT) -> tuple[ClientConnection, FakeTransport]:
        c = ClientConnection(self.gw)
        t = FakeTransport(c, peer)
        c.connection_made(t)
        return c, t

    def connect_upstream(self, greeting: bytes = b"220 mx ESMTP\r\n") -> FakeTransport:
        up = self.upstreams[-1]
        t = FakeTransport(up, ("127.0.0.1", 25))
        up.connection_made(t)
        if greeting:
            up.data_received(greeting)
        return t

    def ready(self) -> tuple[ClientConnection, FakeTransport, FakeTransport]:
        c, ct = self.client()
        ut = self.connect_upstream()
        assert ct.written.startswith(b"220 "), ct.written
        return c, ct, ut


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def turns(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def until(cond: Callable[[], bool], seconds: float = 5.0) -> None:
    """Let the loop run until ``cond()`` holds or ``seconds`` have passed."""
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)


def test_greeting_command_and_reply_relayed() -> None:
    async def go() -> None:
        h = Harness()
        c, ct, ut = h.ready()
        c.data_received(b"HELO client.example\r\n")
        assert bytes(ut.written) == b"HELO client.example\r\n"
        h.upstreams[-1].data_received(b"250 mx\r\n")
        assert ct.written.endswith(b"250 mx\r\n")
        c.data_received(b"QUIT\r\n")
        h.upstreams[-1].data_received(b"221 bye\r\n")
        assert ct.written.endswith(b"221 bye\r\n") and ct.closed
        assert not h.gw.sessions

    run(go)


def test_upstream_lost_gives_421_and_releases() -> None:
    async def go() -> None:
        h = Harness()
        c, ct, _ut = h.ready()
        c.data_received(b"HELO client.example\r\n")
        h.upstreams[-1].data_received(b"250 mx\r\n")
        c.data_received(b"MAIL FROM:<a@example.org>\r\n")
        h.upstreams[-1].data_received(b"250 ok\r\n")  # a transaction open
        h.upstreams[-1].connection_lost(None)
        assert b"421 " in ct.written and ct.closed
        c.connection_lost(None)
        assert not h.gw.sessions and h.gw._idle.is_set()

    run(go)


def test_upstream_closed_while_idle_is_reopened_by_the_next_command() -> None:
    async def go() -> None:
        h = Harness()
        c, ct, ut = h.ready()
        c.data_received(b"HELO client.example\r\n")
        h.upstreams[-1].data_received(b"250 mx\r\n")
        h.upstreams[-1].data_received(b"421 4.4.2 mx Error: timeout exceeded\r\n")
        assert ut.closed and not ct.closed and b"421" not in ct.written
        h.upstreams[-1].connection_lost(None)  # the old connection's end: not the session's
        assert len(h.upstreams) == 1  # nothing opened until the client needs it
        c.data_received(b"NOOP\r\n")
        assert len(h.upstreams) == 2
        ut2 = h.connect_upstream()
        assert bytes(ut2.written) == b"HELO client.example\r\n"  # replayed
        h.upstreams[-1].data_received(b"250 mx\r\n")
        assert bytes(ut2.written) == b"HELO client.example\r\nNOOP\r\n"
        h.upstreams[-1].data_received(b"250 2.0.0 Ok\r\n")
        assert ct.written.endswith(b"250 mx\r\n250 2.0.0 Ok\r\n") and not ct.closed

    run(go)


def test_partial_proxy_header_then_eof_is_quiet() -> None:
    """A load balancer's health check: PROXY header cut short, then EOF."""

    async def go() -> None:
        access = AccessPolicy(proxy_from=(ipaddress.ip_network("192.0.2.0/24"),))
        h = Harness(access=access)
        c, _ct = h.client()
        c.data_received(b"PROXY TCP4 198.51.100.7 ")
        assert c.eof_received() is False  # close: nothing is owed
        c.connection_lost(None)
        assert not h.gw.sessions and not h.upstreams
        assert c._timer is None  # the PROXY deadline no longer runs

    run(go)


def test_proxy_header_then_session_and_eof() -> None:
    async def go() -> None:
        access = AccessPolicy(proxy_from=(ipaddress.ip_network("192.0.2.0/24"),))
        h = Harness(access=access)
        c, ct = h.client()
        c.data_received(b"PROXY TCP4 198.51.100.7 192.0.2.1 5000 25\r\n")
        assert c.peer == "198.51.100.7:5000" and len(h.upstreams) == 1
        h.connect_upstream()
        assert ct.written.startswith(b"220 ")
        c.eof_received()
        c.connection_lost(None)
        assert not h.gw.sessions

    run(go)


def test_exception_while_running_actions_resets_and_releases() -> None:
    async def go() -> None:
        h = Harness(access=AccessPolicy(max_sessions_per_ip=5))
        h.gw.protocol_log = RaisingLog("NOOP")
        c, ct, ut = h.ready()
        assert h.gw.access.sessions == {CLIENT[0]: 1}
        c.data_received(b"NOOP\r\n")  # the log raises inside the action loop
        assert ct.written.endswith(conn_mod.INTERNAL_ERROR) and ct.closed
        assert ut.aborted
        assert not h.gw.sessions and h.gw.access.sessions == {}
        assert h.gw._idle.is_set()
        c.connection_lost(None)  # the transport's own callback afterwards: harmless
        c.data_received(b"NOOP\r\n")
        assert not h.gw.sessions

    run(go)


def test_exception_in_connection_lost_still_releases() -> None:
    async def go() -> None:
        h = Harness(access=AccessPolicy(max_sessions_per_ip=5))
        c, _ct, ut = h.ready()
        ut.fail_close = True  # closing the upstream raises during the teardown
        c.connection_lost(ConnectionResetError())
        assert not h.gw.sessions and h.gw.access.sessions == {}
        assert h.gw._idle.is_set()

    run(go)


def test_exception_in_upstream_data_resets_and_releases() -> None:
    async def go() -> None:
        h = Harness()
        h.gw.protocol_log = RaisingLog("250 poisoned")
        c, ct, ut = h.ready()
        c.data_received(b"HELO x\r\n")
        h.upstreams[-1].data_received(b"250 poisoned\r\n")
        assert ct.closed and ut.aborted and not h.gw.sessions

    run(go)


def test_abandoned_connect_is_cancelled_with_its_session() -> None:
    async def go() -> None:
        h = Harness()
        hang: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def never(*_a: Any, **_k: Any) -> Any:
            await hang

        h.gw.loop.create_connection = never  # type: ignore[method-assign,assignment]
        h.gw.open_upstream = h.real_open  # type: ignore[method-assign]
        c, _ct = h.client()
        await turns(3)
        assert len(h.gw._connects) == 1
        task = next(iter(h.gw._connects))
        c.connection_lost(None)  # the client gives up while the connect hangs
        await turns(3)
        assert task.cancelled() and not h.gw._connects and not h.gw.sessions

    run(go)


def test_connect_has_its_own_timeout() -> None:
    """Bounded even if the session never gives the connection up."""

    async def go() -> None:
        h = Harness()
        h.gw.policy = Policy(timeouts=dataclasses.replace(Policy().timeouts, connect=0.01))
        c, _ = h.client()

        async def slow(*_a: Any, **_k: Any) -> Any:
            await asyncio.sleep(3600)

        h.gw.loop.create_connection = slow  # type: ignore[method-assign,assignment]
        up = UpstreamConnection(c)  # not the session's own: nobody closes it
        h.real_open(up)
        task = up.connecting
        assert task is not None
        await until(lambda: up.closed)
        await turns(3)
        assert up.closed and task.cancelled() and not h.gw._connects

    run(go)


def test_a_refused_or_failing_connect_is_counted_and_told_to_the_session() -> None:
    """A real refused connect (a closed loopback port) and a connect that fails
    with something other than OSError: each counted once as a connect error, the
    client answered 421, the task gone, the session released."""

    class Counting(Metrics):
        def __init__(self) -> None:
            self.errors: list[str] = []

        def upstream_error(self, kind: str) -> None:
            self.errors.append(kind)

    async def go(fail: Callable[..., Any] | None) -> list[str]:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
        port = closed.getsockname()[1]
        h = Harness(upstream_host="127.0.0.1", upstream_port=port)
        h.gw.metrics = metrics = Counting()
        if fail is not None:
            h.gw.loop.create_connection = fail  # type: ignore[method-assign]
        h.gw.open_upstream = h.real_open  # type: ignore[method-assign]
        _c, ct = h.client()
        await until(lambda: ct.closed, 2.0)
        closed.close()
        await turns(3)
        assert b"421 " in ct.written and ct.closed, ct.written
        assert not h.gw._connects and not h.gw.sessions
        return metrics.errors

    async def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("not an OSError")

    assert asyncio.run(go(None)) == ["connect"]  # not also "lost": it never was up
    assert asyncio.run(go(broken)) == ["connect"]

    async def lost(idle: bool) -> list[str]:
        h = Harness()
        h.gw.metrics = metrics = Counting()
        c, ct, _ut = h.ready()
        c.data_received(b"HELO c\r\n")
        h.upstreams[-1].data_received(b"250 mx\r\n")
        if not idle:  # a transaction open
            c.data_received(b"MAIL FROM:<a@example.org>\r\n")
            h.upstreams[-1].data_received(b"250 ok\r\n")
        h.upstreams[-1].connection_lost(None)
        assert (b"421 " in ct.written) is not idle
        return metrics.errors

    assert asyncio.run(lost(idle=False)) == ["lost"]
    assert asyncio.run(lost(idle=True)) == []  # an idle session closed by the server


def test_drain_cancels_connects_and_frees_sessions() -> None:
    async def go() -> None:
        h = Harness(drain_grace=0.05)

        async def never(*_a: Any, **_k: Any) -> Any:
            await asyncio.sleep(3600)

        h.gw.loop.create_connection = never  # type: ignore[method-assign,assignment]
        h.gw.open_upstream = h.real_open  # type: ignore[method-assign]
        _c, ct = h.client()
        await turns(3)
        tasks = list(h.gw._connects)
        assert await asyncio.wait_for(h.gw.drain(), 5) == 1  # the grace over: cut
        assert tasks and all(t.done() for t in tasks)
        assert not h.gw.sessions and ct.closed
        assert bytes(ct.written) == b"421 4.3.2 Service shutting down, closing connection\r\n"

    run(go)


def test_bytes_written_before_the_upstream_exists_are_sent_first() -> None:
    async def go() -> None:
        h = Harness()
        h.gw.upstream_proxy = ProxyVersion.V1
        _c, _ct = h.client()
        up = h.upstreams[-1]
        up.write(b"EARLY\r\n")
        ut = FakeTransport(up, ("127.0.0.1", 25))
        up.connection_made(ut)
        assert bytes(ut.written).startswith(b"PROXY TCP4 ")
        assert bytes(ut.written).endswith(b"\r\nEARLY\r\n")

    run(go)


def test_early_bytes_over_the_mark_pause_the_client() -> None:
    async def go() -> None:
        h = Harness()
        c, _ct = h.client()
        up = h.upstreams[-1]
        up.write(b"x" * (flow_mod.WRITE_HIGH + 1))
        assert c.flow.up_full
        up.connection_made(FakeTransport(up, ("127.0.0.1", 25)))
        assert not c.flow.up_full

    run(go)


def _tls() -> TlsContexts:
    return TlsContexts(
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    )


def test_client_start_tls_keeps_limits_and_pause() -> None:
    async def go() -> None:
        h = Harness()
        h.gw.tls = _tls()
        c, ct, _ut = h.ready()
        new = FakeTransport(c)

        async def start_tls(transport: Any, protocol: Any, *a: Any, **k: Any) -> Any:
            assert transport is ct and protocol is c
            return new

        h.gw.loop.start_tls = start_tls  # type: ignore[method-assign,assignment]
        c.flow.held = b"QUIT\r\n"  # unread input: the client must stay paused
        c._update_reading()
        assert not ct.reading
        await c._start_tls("client")
        assert c.transport is new
        assert new.limits_set == (flow_mod.WRITE_HIGH, flow_mod.WRITE_LOW)
        assert not new.reading

    run(go)


def test_upstream_start_tls_keeps_limits_and_pause() -> None:
    async def go() -> None:
        h = Harness()
        h.gw.tls = _tls()
        c, _ct, ut = h.ready()
        up = h.upstreams[-1]
        new = FakeTransport(up, ("127.0.0.1", 25))

        async def start_tls(transport: Any, protocol: Any, *a: Any, **k: Any) -> Any:
            assert transport is ut and protocol is up
            return new

        h.gw.loop.start_tls = start_tls  # type: ignore[method-assign,assignment]
        c.pause_writing()  # the client is slow: the server is not read
        await c._start_tls("server")
        assert up.transport is new
        assert new.limits_set == (flow_mod.WRITE_HIGH, flow_mod.WRITE_LOW)
        assert not new.reading

    run(go)


def test_tls_failure_reaches_the_core_without_leaks() -> None:
    async def go() -> None:
        h = Harness()
        h.gw.tls = _tls()
        c, ct, _ut = h.ready()

        async def fail(*a: Any, **k: Any) -> Any:
            raise ssl.SSLError("handshake failed")

        h.gw.loop.start_tls = fail  # type: ignore[method-assign,assignment]
        await c._start_tls("client")  # the core resets both sides
        assert ct.closed and not h.gw.sessions

    run(go)


def _replies(out: bytes) -> list[bytes]:
    return [line for line in out.split(b"\r\n") if line]


def test_unread_replies_pause_the_client_and_stay_bounded() -> None:
    """A client that sends lines the gateway answers itself, never reading."""

    async def go() -> None:
        h = Harness()
        c, ct, _ut = h.ready()
        ct.model_buffer = True
        ct.written.clear()
        lines = 200_000
        c.data_received(b"\r\n" * lines)  # one huge read of empty command lines
        await turns(200)
        # Our write buffer stops near the high mark (one slice's replies over at most:
        # each 2-octet line gets a reply of under 64), and the client is not read.
        assert ct.buffered <= flow_mod.WRITE_HIGH + flow_mod.FEED_SLICE * 32
        assert not ct.reading
        assert len(c.flow.held) <= 2 * lines
        # The client reads at last: everything is answered, in order, then reading resumes.
        for _ in range(1000):
            ct.drain()
            await turns(5)
            if not c.flow.held and ct.reading:
                break
        got = _replies(bytes(ct.written))
        assert len(got) == lines and len(set(got)) == 1 and got[0].startswith(b"500 ")
        assert ct.reading

    run(go)


def test_work_per_turn_is_bounded() -> None:
    """One read full of commands is answered over several event-loop turns, so other
    sessions on the worker get their turn in between."""

    async def go() -> None:
        h = Harness()
        c, ct, _ut = h.ready()
        _other, ot = h.client(("192.0.2.11", 40001))
        ct.written.clear()
        c.data_received(b"\r\n" * 100_000)
        first = len(_replies(bytes(ct.written)))
        assert 0 < first <= flow_mod.FEED_BUDGET // 2
        assert not ct.reading  # the rest waits its turn
        h.connect_upstream()  # the other session gets going meanwhile
        assert ot.written.startswith(b"220 ")
        await turns(200)
        assert len(_replies(bytes(ct.written))) == 100_000 and ct.reading

    run(go)


def test_eof_with_held_input_answers_it() -> None:
    async def go() -> None:
        h = Harness()
        c, ct, _ut = h.ready()
        ct.model_buffer = True
        ct.written.clear()
        c.data_received(b"\r\n" * 50_000)
        assert c.flow.held
        c.eof_received()
        assert not c.flow.held

    run(go)


def test_timer_and_shutdown_paths() -> None:
    async def go() -> None:
        h = Harness()
        c, ct, _ut = h.ready()
        c.shutdown()  # no transaction: 421 at once
        assert b"421 4.3.2" in ct.written and ct.closed
        assert not h.gw.sessions
        c._on_timer()  # a late timer after the end: nothing happens

    run(go)


def test_refused_at_the_session_cap() -> None:
    async def go() -> None:
        h = Harness(max_sessions=1)
        h.client()
        c2, t2 = h.client(("192.0.2.12", 1))
        assert t2.written.startswith(b"421 ") and t2.closed
        c2.data_received(b"HELO x\r\n")
        c2.eof_received()
        c2.connection_lost(None)
        assert len(h.gw.sessions) == 1 and len(h.upstreams) == 1

    run(go)


@pytest.mark.parametrize("when", ["connection_made", "eof_received"])
def test_exception_at_any_entry_point_is_contained(
    when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        h = Harness()
        if when == "connection_made":

            def boom(_conn: Any) -> bool:
                raise RuntimeError("admit failed")

            monkeypatch.setattr(h.gw, "admit", boom)
            c, ct = h.client()
            assert ct.closed
        else:
            c, ct, _ut = h.ready()
            h.gw.protocol_log = RaisingLog("")
            c.data_received(b"HELO x")  # a partial line, then EOF completes nothing
            c.eof_received()
            c.connection_lost(None)
        assert not h.gw.sessions

    run(go)


def test_actions_are_carried_out_in_their_order() -> None:
    """Writes to either side, protocol-log traces and timers keep the core's order,
    whichever way each kind of action is dispatched."""

    class OrderLog(RaisingLog):
        def __init__(self, ct: FakeTransport, ut: FakeTransport) -> None:
            super().__init__("")
            self.seen: list[tuple[str, int, int]] = []
            self.ct, self.ut = ct, ut

        def trace(self, sid: str, tr: Trace) -> None:
            self.seen.append((tr.line, len(self.ct.written), len(self.ut.written)))

    async def go() -> None:
        h = Harness()
        c, ct, ut = h.ready()
        log = OrderLog(ct, ut)
        c._plog = log
        client0, server0 = len(ct.written), len(ut.written)
        c._run(
            [
                ToClient(b"a"),
                Trace(Direction.GW_TO_CLIENT, "one"),
                ToServer(b"bb"),
                SetTimer(h.gw.loop.time() + 60),
                Trace(Direction.GW_TO_SERVER, "two"),
                ToClient(b"ccc"),
                Trace(Direction.GW_TO_CLIENT, "three"),
            ]
        )
        assert log.seen == [
            ("one", client0 + 1, server0),
            ("two", client0 + 1, server0 + 2),
            ("three", client0 + 4, server0 + 2),
        ]
        assert ct.written.endswith(b"accc") and ut.written.endswith(b"bb")
        assert c._timer is not None

    run(go)
