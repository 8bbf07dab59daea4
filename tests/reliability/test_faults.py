"""Fault campaign: the upstream and the client fail at every point of a session.

For each fault (close or reset, at connect, mid-greeting, on each command, mid-DATA,
after the end of data before its reply, after that reply) one session runs through
the gateway, then a clean one. Checked after every run:

* the client never got a 2xx the server did not send (per verb, counted on both ends);
* the gateway keeps serving: the clean session after the fault delivers;
* nothing leaks: open file descriptors (``/proc/PID/fd``) are back to where they were,
  and, in process, no session, no upstream connect and no task is left over.

The gateway runs in this process (so its tasks and tables can be inspected) and as
``smtpguard serve`` in a subprocess (as deployed, fds counted from outside).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from smtpguard.core.policy import Policy
from smtpguard.gateway.server import Gateway, GatewayConfig
from tests.peers import LOOPBACK, free_port
from tests.reliability.hostile import (
    CLIENT_POINTS,
    HOW,
    UPSTREAM_POINTS,
    HostileUpstream,
    hostile_client,
)

pytestmark = pytest.mark.timeout(300)

FAULTS = [("upstream", p, h) for p in UPSTREAM_POINTS for h in HOW] + [
    ("client", p, h) for p in CLIENT_POINTS for h in HOW
]


def _fds(pid: int | None = None) -> int:
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


async def _settled(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return bool(check())  # type: ignore[operator]


async def _campaign(port: int, up: HostileUpstream, settled: object, leaks: object) -> None:
    failures: list[str] = []
    for side, point, how in FAULTS:
        before = up.sent_2xx.copy()
        if side == "upstream":
            up.fault = (point, how)
            res = await asyncio.wait_for(hostile_client(port, None), 30)
        else:
            up.fault = None
            res = await asyncio.wait_for(hostile_client(port, (point, how)), 30)
        sent = up.sent_2xx - before
        for verb, n in res.got_2xx.items():
            if n > sent[verb]:
                failures.append(f"{side} {point} {how}: false 2xx to {verb}: {res.replies}")
        if not await _settled(settled):
            failures.append(f"{side} {point} {how}: leaked: {leaks()}")  # type: ignore[operator]
        up.fault = None
        clean = await asyncio.wait_for(hostile_client(port, None), 30)
        if clean.got_2xx["."] != 1:
            failures.append(f"{side} {point} {how}: not serving after it: {clean.replies}")
        if not await _settled(settled):
            failures.append(f"{side} {point} {how}: leaked after the clean run: {leaks()}")  # type: ignore[operator]
    assert not failures, "\n".join(failures)


@asynccontextmanager
async def _upstream() -> AsyncIterator[HostileUpstream]:
    up = HostileUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.stop()


def test_faults_in_process() -> None:
    async def go() -> None:
        async with _upstream() as up:
            gw = Gateway(
                GatewayConfig(listen_port=0, upstream_port=up.port, drain_grace=5), Policy()
            )
            _, port = await gw.start()
            baseline_fds = _fds()
            me = asyncio.current_task()

            def tasks() -> set[asyncio.Task[object]]:
                return {t for t in asyncio.all_tasks() if t is not me and t not in up.handlers}

            def settled() -> bool:
                return (
                    not gw.sessions
                    and not gw._connects
                    and not tasks()
                    and not up.handlers
                    and _fds() == baseline_fds
                )

            def leaks() -> str:
                return (
                    f"sessions={len(gw.sessions)} connects={len(gw._connects)} "
                    f"tasks={tasks()} upstream handlers={len(up.handlers)} "
                    f"fds={_fds()} (baseline {baseline_fds})"
                )

            await _campaign(port, up, settled, leaks)
            await gw.drain()

    asyncio.run(go())


def test_faults_through_serve(tmp_path: Path) -> None:
    async def go() -> None:
        async with _upstream() as up:
            port = free_port()
            out = tmp_path / "serve.out"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "smtpguard",
                "serve",
                "--listen",
                f"{LOOPBACK}:{port}",
                "--upstream",
                f"{LOOPBACK}:{up.port}",
                "--workers",
                "1",
                stdout=out.open("wb"),  # a file: a full pipe would block the gateway
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                assert await _settled(lambda: b"stop with" in out.read_bytes(), 30), out.read_text()
                # The reachability check and the start leave nothing open.
                await _settled(lambda: not up.handlers)
                baseline = _fds(proc.pid)

                def settled() -> bool:
                    return not up.handlers and _fds(proc.pid) == baseline

                def leaks() -> str:
                    return f"gateway fds={_fds(proc.pid)} (baseline {baseline})"

                await _campaign(port, up, settled, leaks)
                assert proc.returncode is None
            finally:
                if proc.returncode is None:
                    proc.terminate()
                assert await asyncio.wait_for(proc.wait(), 30) == 0

    asyncio.run(go())
