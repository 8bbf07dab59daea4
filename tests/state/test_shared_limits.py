"""SharedLimits with a fake gateway and connection (no sockets): admission after the
store answers, refusal, failing open, a client gone before the answer, renewal and
release of leases."""

from __future__ import annotations

import asyncio
from pathlib import Path

from smtpguard.core.actions import PolicyEvent
from smtpguard.gateway.access import (
    SESSION_CAP,
    AccessControl,
    AccessPolicy,
    Refusal,
    SharedLimits,
)
from smtpguard.state import FAIL_OPEN, Guarded
from smtpguard.state.sqlite_store import SqliteStore, prepare
from tests.peers import free_port


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


class FakeConn:
    def __init__(self, sid: str, peer: str = "192.0.2.7:4000") -> None:
        self.sid, self.peer = sid, peer
        self.transport = FakeTransport()
        self.started = False

    def admitted(self) -> None:
        self.started = True


class Stats:
    sessions_refused = 0


class FakeMetrics:
    def __init__(self) -> None:
        self.refused: list[str] = []

    def session_refused(self, reason: str) -> None:
        self.refused.append(reason)


class FakeGateway:
    def __init__(self) -> None:
        self.stats = Stats()
        self.metrics = FakeMetrics()
        self.events: list[PolicyEvent] = []
        self.registered: list[FakeConn] = []

    def policy_event(self, sid: str, peer: str, ev: PolicyEvent) -> None:
        self.events.append(ev)

    def register(self, conn: FakeConn) -> None:
        self.registered.append(conn)

    def refuse(self, conn: FakeConn, refusal: Refusal) -> None:
        """What Gateway.refuse does, recorded."""
        self.stats.sessions_refused += 1
        self.metrics.session_refused(refusal.reason)
        self.events.append(PolicyEvent(refusal.event_id, refusal.message, refusal.action))
        conn.transport.write(refusal.reply)
        conn.transport.close()


def limits(tmp_path: Path, cap: int = 2, lease: float = 30.0) -> SharedLimits:
    prepare(str(tmp_path))
    store = Guarded(SqliteStore(str(tmp_path)), retry=0.5, timeout=5.0)
    return SharedLimits(store, AccessControl(AccessPolicy(max_sessions_per_ip=cap)), lease)


async def settle(sl: SharedLimits) -> None:
    while sl._tasks:
        await asyncio.wait(list(sl._tasks))


def test_admitted_then_refused_then_free_again(tmp_path: Path) -> None:
    async def body() -> None:
        sl = limits(tmp_path)
        gw = FakeGateway()
        conns = [FakeConn(f"s{i}") for i in range(3)]
        for c in conns:
            sl.admit(gw, c)  # type: ignore[arg-type]
        await settle(sl)
        assert [c.started for c in conns] == [True, True, False]
        assert gw.registered == conns[:2]
        assert conns[2].transport.written.startswith(b"421 4.7.0 Too many sessions")
        assert conns[2].transport.closing and gw.metrics.refused == ["session-cap"]
        assert [e.id for e in gw.events] == [SESSION_CAP]
        assert not sl.access.counting  # the in-process counters are off
        sl.release("s0")
        await settle(sl)
        again = FakeConn("s3")
        sl.admit(gw, again)  # type: ignore[arg-type]
        await settle(sl)
        assert again.started
        await sl.close()

    asyncio.run(body())


def test_a_client_gone_before_the_answer_gives_its_lease_back(tmp_path: Path) -> None:
    async def body() -> None:
        sl = limits(tmp_path, cap=1)
        gw = FakeGateway()
        gone = FakeConn("s1")
        sl.admit(gw, gone)  # type: ignore[arg-type]
        gone.transport.closing = True  # the client hung up while the store answered
        await settle(sl)
        assert not gone.started and gw.registered == []
        assert await sl.store.lease_count("192.0.2.7") == 0
        await sl.close()

    asyncio.run(body())


def test_renewal_keeps_leases_and_close_returns_them(tmp_path: Path) -> None:
    async def body() -> None:
        sl = limits(tmp_path, cap=5, lease=3.0)  # renewed every second
        gw = FakeGateway()
        for i in range(3):
            sl.admit(gw, FakeConn(f"s{i}"))  # type: ignore[arg-type]
        await settle(sl)
        assert sl._renewal is not None
        await asyncio.sleep(4.0)  # past the lease: alive only through the renewals
        assert await sl.store.lease_count("192.0.2.7") == 3
        store = SqliteStore(str(tmp_path))
        await sl.close()
        assert await store.lease_count("192.0.2.7") == 0
        await store.close()

    asyncio.run(body())


def test_store_down_fails_open_with_an_event() -> None:
    from smtpguard.state.redis_store import RedisStore

    async def body() -> None:
        store = Guarded(RedisStore(f"redis://127.0.0.1:{free_port()}/0", 1.0), retry=30.0)
        sl = SharedLimits(store, AccessControl(AccessPolicy(max_sessions_per_ip=1)))
        gw = FakeGateway()
        conns = [FakeConn(f"s{i}") for i in range(3)]
        for c in conns:
            sl.admit(gw, c)  # type: ignore[arg-type]
        await settle(sl)
        assert all(c.started for c in conns)  # over the cap, but nothing could count
        assert [e.id for e in gw.events] == [FAIL_OPEN] * 3
        assert "limits not checked" in gw.events[0].message
        await sl.close()

    asyncio.run(body())


def test_a_slot_of_a_client_gone_while_asking_is_free_for_the_next(tmp_path: Path) -> None:
    async def body() -> None:
        sl = limits(tmp_path, cap=1)
        gw = FakeGateway()
        probe = FakeConn("s1")  # a health check: connects and leaves at once
        sl.admit(gw, probe)  # type: ignore[arg-type]
        await asyncio.sleep(0)  # its request is on its way to the store
        probe.transport.closing = True
        sl.release("s1")  # what Gateway.release does when the connection is lost
        client = FakeConn("s2")
        sl.admit(gw, client)  # type: ignore[arg-type]
        await settle(sl)
        assert not probe.started and client.started
        await sl.close()

    asyncio.run(body())
