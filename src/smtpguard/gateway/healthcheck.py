"""Active health checks of the upstream servers (``upstream_check_interval``).

Every interval each server gets one check: connect, read the greeting, send QUIT
and close. Nothing else is sent, so a check never starts a mail transaction and a
server logs it as a client that connected and quit. A 220 greeting is a success; a
refused or timed-out connection, a lost one, a reply that is not 220 or not a
reply at all is a failure. The outcome goes to the gateway as a session's would
(:meth:`~smtpguard.gateway.server.Gateway.upstream_outcome`), so a down server comes
back up as soon as a check sees it greet, and a dead one is marked down without a
client waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Protocol

from smtpguard.core.grammar import LineError, Reply, ReplyAssembler, frame_reply_line
from smtpguard.gateway.upstreams import Address, UpstreamPool

__all__ = ["HealthChecks", "check_once"]

QUIT_WAIT = 1.0  # seconds the check waits for the reply to its QUIT (it does not count)


class Reporter(Protocol):
    def __call__(
        self, address: Address, ok: bool, why: str, latency: float | None, session: bool
    ) -> None: ...


async def read_greeting(reader: asyncio.StreamReader) -> Reply:
    """The server's first complete reply (LineError if what it sends is not one)."""
    assembler = ReplyAssembler()
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError("connection closed before the greeting")
        reply = assembler.add(frame_reply_line(line))
        if reply is not None:
            return reply


async def check_once(address: Address, timeout: float, clock: Callable[[], float]) -> str | None:
    """One check of the server at ``address``: None if it greeted with 220, else why
    not. Connect and greeting together get ``timeout`` seconds."""
    started = clock()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(*address)
            reply = await read_greeting(reader)
        if reply.code != 220:
            return f"greeting {reply.code}"
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(OSError, TimeoutError):  # the 221, if it comes soon
            async with asyncio.timeout(QUIT_WAIT):
                await writer.drain()
                await reader.readline()
    except TimeoutError:
        return f"no greeting within {clock() - started:.1f}s"
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    except LineError as exc:
        return f"not an SMTP greeting: {exc.reason}"
    finally:
        if writer is not None:
            writer.close()
    return None


class HealthChecks:
    """The checking task of one gateway process: every ``interval`` seconds, each
    server of ``pool`` once, all at the same time."""

    def __init__(
        self,
        pool: UpstreamPool,
        interval: float,
        timeout: float,
        report: Reporter,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.timeout = timeout
        self._report = report
        self._loop = loop
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = self._loop.create_task(self._run())

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _run(self) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self.interval)

    async def round(self) -> None:
        """Check every server once."""
        servers = [s.address for s in self.pool.servers]
        await asyncio.gather(*(self._check(a) for a in servers))

    async def _check(self, address: Address) -> None:
        clock = self._loop.time
        started = clock()
        timeout = min(self.timeout, max(self.interval, 1.0))
        why = await check_once(address, timeout, clock)
        self._report(address, why is None, why or "", clock() - started, False)
