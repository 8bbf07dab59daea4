"""Every event reaches the session through the shell's one door.

The door (``ClientConnection._dispatch``) reads the connection's clock first, so a
clock that raises once, armed just before an event arrives, is an exception at the
door for that event: whichever source it came from (client data or EOF, the
timer, the access decision from the shared store, the upstream's connect, bytes and
loss, the store's dedupe and rate answers, a TLS handshake's outcome, a drain), the
session must be torn down the same way: ``421 4.3.0`` to the client, both sides
closed, the gateway's release run exactly once and the shared store's slot given
back exactly once. An event path that bypassed the door would leave the session
running, or release it twice.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtpguard.core.actions import StartTls
from smtpguard.gateway import connection as conn_mod
from smtpguard.gateway.access import AccessPolicy, SharedLimits
from smtpguard.gateway.connection import ClientConnection, Stage
from smtpguard.state import Guarded
from smtpguard.state.sqlite_store import SqliteStore, prepare
from tests.gateway.test_connection import CLIENT, FakeTransport, Harness, _Gateway, _tls, turns


class StopClock:
    """The connection's clock; raises once when armed."""

    def __init__(self, real: Callable[[], float]) -> None:
        self.real = real
        self.armed = False
        self.fired = 0

    def __call__(self) -> float:
        if self.armed:
            self.armed = False
            self.fired += 1
            raise RuntimeError("injected at the door")
        return self.real()


class Counting(_Gateway):
    """Counts :meth:`release` per connection."""

    released: dict[str, int]

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.released = {}

    def release(self, conn: Any) -> None:
        self.released[conn.sid] = self.released.get(conn.sid, 0) + 1
        super().release(conn)


SOURCES = [
    "access-decision",
    "upstream-connected",
    "client-data",
    "client-eof",
    "upstream-data",
    "upstream-lost",
    "timer",
    "dedupe-answer",
    "rate-answer",
    "tls-done",
    "tls-failed",
    "shutdown",
]


@pytest.mark.parametrize("source", SOURCES)
def test_an_exception_at_the_door_tears_down_once_from_every_source(
    source: str, tmp_path: Path
) -> None:
    async def go() -> None:
        h = Harness(access=AccessPolicy(max_sessions_per_ip=1), cls=Counting)
        prepare(str(tmp_path))
        store = Guarded(SqliteStore(str(tmp_path)), retry=0.5, timeout=5.0)
        limits = SharedLimits(store, h.gw.access)
        h.gw.limits = limits
        freed: list[str] = []
        real_release = limits.release

        def release(sid: str) -> None:
            freed.append(sid)
            real_release(sid)

        limits.release = release  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()

        async def settle() -> None:
            for _ in range(200):
                await asyncio.sleep(0.005)
                if not limits._tasks:
                    return

        c = ClientConnection(h.gw)
        clock = StopClock(c.clock)
        c.clock = clock
        ct = FakeTransport(c, CLIENT)
        c.connection_made(ct)
        assert c.stage is Stage.ADMISSION
        ut: FakeTransport | None = None
        tls_transport = FakeTransport(c, CLIENT)
        if source == "access-decision":
            clock.armed = True  # the session's Start, once the store says yes
            await settle()
        else:
            await settle()
            assert c.stage is Stage.OPEN, c.stage
            if source == "upstream-connected":
                clock.armed = True
                ut = h.connect_upstream(greeting=b"")
            else:
                ut = h.connect_upstream()
                assert ct.written.startswith(b"220 ")
                up = h.upstreams[-1]
                clock.armed = True
                if source == "client-data":
                    c.data_received(b"NOOP\r\n")
                elif source == "client-eof":
                    assert c.eof_received() is False
                elif source == "upstream-data":
                    up.data_received(b"250 ok\r\n")
                elif source == "upstream-lost":
                    up.connection_lost(None)
                elif source == "timer":
                    c._set_timer(loop.time() + 0.01)
                    await asyncio.sleep(0.05)
                elif source == "dedupe-answer":
                    loop.call_soon(c.dedupe_answer, None)  # as the store's task does
                    await turns(3)
                elif source == "rate-answer":
                    loop.call_soon(c.rate_answer, True)
                    await turns(3)
                elif source in ("tls-done", "tls-failed"):
                    h.gw.tls = _tls()

                    async def start_tls(*_a: Any, **_k: Any) -> Any:
                        if source == "tls-failed":
                            raise ssl.SSLError("handshake failed")
                        return tls_transport

                    h.gw.loop.start_tls = start_tls  # type: ignore[method-assign,assignment]
                    c._run([StartTls("client")])  # the core's action: a task of its own
                    await turns(5)
                elif source == "shutdown":
                    c.shutdown()
        await settle()
        assert clock.fired == 1, "the event never reached the door"
        assert c.stage is Stage.CLOSED
        if source == "tls-done":
            ct = tls_transport  # the session's client transport since the handshake
        assert ct.closed
        if source != "access-decision":
            assert ct.written.endswith(conn_mod.INTERNAL_ERROR), ct.written[-80:]
            assert ut is not None and ut.aborted
        c.connection_lost(None)  # the transport's own callback afterwards
        c.eof_received()
        await settle()
        assert isinstance(h.gw, Counting) and h.gw.released == {c.sid: 1}
        assert freed == [c.sid]
        assert not h.gw.sessions
        assert await store.lease_count(str(ipaddress.ip_address(CLIENT[0]))) == 0
        await limits.close()

    asyncio.run(go())


def test_one_refusal_block() -> None:
    """A session refused before it starts (cap, rate, the shared store's answer) is
    counted, logged and told in one place, ``Gateway.refuse``: no other code in the
    shell counts a refusal or bumps the refused-sessions metric."""
    root = Path(conn_mod.__file__).parent
    places = [
        f"{path.name}:{n}"
        for path in sorted(root.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if ("sessions_refused +=" in line or ".session_refused(" in line)
    ]
    assert len(places) == 2 and all(p.startswith("server.py:") for p in places), places
