"""The active health check against real and recording peers: connect, read the
greeting, QUIT, nothing else; a 220 is a success, anything else says why not."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from smtpguard.core.policy import Balance
from smtpguard.gateway.healthcheck import HealthChecks, check_once
from smtpguard.gateway.upstreams import Health, UpstreamPool
from tests.peers import LOOPBACK, SmtpSink, free_port

pytestmark = pytest.mark.e2e


def _run(address: tuple[str, int], timeout: float = 5.0) -> str | None:
    async def main() -> str | None:
        return await check_once(address, timeout, asyncio.get_running_loop().time)

    return asyncio.run(main())


def _addr(sink: SmtpSink) -> tuple[str, int]:
    return (LOOPBACK, sink.port)


def test_a_server_greeting_220_passes(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    try:
        assert _run(_addr(sink)) is None
    finally:
        sink.stop()


def test_a_server_greeting_421_fails(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path, "-Q", "CONNECT")
    try:
        assert _run(_addr(sink)) == "greeting 421"
    finally:
        sink.stop()


def test_a_refused_connect_fails() -> None:
    why = _run((LOOPBACK, free_port()))
    assert why is not None and "refused" in why.lower()


def test_a_silent_server_fails_after_the_timeout() -> None:
    with socket.create_server((LOOPBACK, 0)) as quiet:  # accepts, never greets
        why = _run((LOOPBACK, quiet.getsockname()[1]), timeout=0.3)
    assert why is not None and why.startswith("no greeting within")


def test_the_check_sends_quit_and_nothing_else() -> None:
    received = bytearray()

    async def main() -> str | None:
        done = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220-mx.example.test\r\n220 ESMTP\r\n")
            received.extend(await reader.read())  # until the checker closes
            done.set()
            writer.close()

        server = await asyncio.start_server(serve, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        why = await check_once((LOOPBACK, port), 5.0, asyncio.get_running_loop().time)
        await asyncio.wait_for(done.wait(), 5)
        server.close()
        return why

    assert asyncio.run(main()) is None
    assert bytes(received) == b"QUIT\r\n"


def test_a_round_reports_each_server(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    dead = (LOOPBACK, free_port())
    pool = UpstreamPool([_addr(sink), dead], Balance.FAILOVER, fail_limit=1, backoff=30)
    reports: list[tuple[tuple[str, int], bool, bool]] = []

    def report(
        address: tuple[str, int], ok: bool, why: str, latency: float | None, session: bool
    ) -> None:
        reports.append((address, ok, session))
        if ok:
            pool.succeeded(address, 0, latency, session)
        else:
            pool.failed(address, 0, why)

    async def main() -> None:
        checks = HealthChecks(pool, 10.0, 5.0, report, asyncio.get_running_loop())
        await checks.round()

    try:
        asyncio.run(main())
    finally:
        sink.stop()
    assert sorted(reports) == sorted([(_addr(sink), True, False), (dead, False, False)])
    assert [s.health for s in pool.servers] == [Health.UP, Health.DOWN]
    assert pool.servers[0].sessions == 0  # a check is not a session
