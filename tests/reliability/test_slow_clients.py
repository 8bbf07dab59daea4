"""Abusive and slow clients against ``smtpguard serve``: memory stays bounded and a
normal sender keeps delivering (no timing is asserted, only that it gets through).

``bench/soak.py slowloris`` is the long version (5,000 connections, latency figures).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, SmtpSink
from tests.reliability.procs import Client, Serve, send_one, until

pytestmark = pytest.mark.timeout(180)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_client_that_never_reads_its_replies_is_bounded_and_starves_nobody(
    tmp_path: Path,
) -> None:
    sink = SmtpSink(tmp_path)
    try:
        gw = Serve(tmp_path, "--upstream", sink.address, "--workers", "1")
        try:
            assert send_one(gw.port).startswith(b"250")  # warm
            before = _rss_kb(gw.proc.pid)
            abuser = socket.create_connection((LOOPBACK, gw.port), 30)
            abuser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            assert abuser.recv(100).startswith(b"220")
            flood = b"\r\n" * (4 * 1024 * 1024)  # 8 MB of lines the gateway answers itself
            sent = [0]

            def push() -> None:
                view = memoryview(flood)
                try:
                    while sent[0] < len(flood):
                        sent[0] += abuser.send(view[sent[0] : sent[0] + 65536])
                except OSError:
                    pass  # blocked until the timeout: the gateway stopped reading

            th = threading.Thread(target=push)
            th.start()
            until(lambda: sent[0] > 1024 * 1024, 30, "the flood to start")
            # Another client on the same (only) worker is served meanwhile.
            for _ in range(3):
                assert send_one(gw.port).startswith(b"250")
            th.join(60)
            grown = _rss_kb(gw.proc.pid) - before
            # Our replies wait in a bounded write buffer; the client is no longer read.
            assert grown < 48 * 1024, f"RSS grew by {grown} KB"
            assert sent[0] < len(flood), "the gateway read everything: no backpressure"
            abuser.close()
        finally:
            assert gw.stop() == 0
    finally:
        sink.stop()


async def _slow(port: int, n: int, stop: asyncio.Event) -> int:
    writers = []
    for i in range(n):
        _, w = await asyncio.open_connection(LOOPBACK, port)
        if i % 3 == 2:
            w.write(b"NOOP\r\n" * 50)  # and never read the replies
        writers.append(w)
    while not stop.is_set():
        for i, w in enumerate(writers):
            if i % 3 == 1:
                w.write(b"H")  # one byte at a time, never a whole line
        await asyncio.sleep(0.5)
    for w in writers:
        w.transport.abort()
    return len(writers)


def test_slow_clients_do_not_stop_a_normal_sender(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path, "-m", "2000")  # its default: 256 connections at a time
    try:
        gw = Serve(tmp_path, "--upstream", sink.address, "--workers", "2")
        try:

            def fds() -> int:
                return gw.fds() + sum(
                    len(list(Path(f"/proc/{p}/fd").iterdir())) for p in gw.children()
                )

            # The start-up probe's session may still be closing: wait for a steady count.
            readings = [fds()]
            while len(readings) < 3 or len(set(readings[-3:])) > 1:
                time.sleep(0.2)
                readings.append(fds())
            baseline = readings[-1]
            stop = asyncio.Event()
            results: list[bytes] = []
            loop = asyncio.new_event_loop()

            def sender() -> None:
                for _ in range(10):
                    results.append(send_one(gw.port))
                loop.call_soon_threadsafe(stop.set)

            async def main() -> int:
                th = threading.Thread(target=sender)
                slow = asyncio.create_task(_slow(gw.port, 300, stop))
                await asyncio.sleep(1)
                th.start()
                n = await slow
                th.join()
                return n

            assert loop.run_until_complete(main()) == 300
            loop.close()
            assert len(results) == 10 and all(r.startswith(b"250") for r in results)

            until(lambda: fds() == baseline, 60, f"fds back to {baseline}")
            c = Client(gw.port)
            assert c.reply().startswith(b"220")
            c.close()
        finally:
            assert gw.stop() == 0
    finally:
        sink.stop()
