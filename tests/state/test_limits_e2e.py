"""``serve --workers 2`` with the embedded store: per-address limits are exact across
workers (they used to be per worker: a cap of 2 admitted 4 on two workers).

Clients bind to 127.0.0.2/127.0.0.3 so that the readiness probe (from 127.0.0.1)
never counts against them; all are loopback.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess, SmtpSink

pytestmark = pytest.mark.e2e


def greeting(port: int, source: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection((LOOPBACK, port), 10, source_address=(source, 0))
    s.settimeout(10)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(1000)
        if not chunk:
            break
        data += chunk
    return s, data


def serve(tmp_path: Path, sink: SmtpSink, access: str, *args: str) -> GatewayProcess:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[gateway]\nupstream = "{sink.address}"\n[access]\n{access}\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\ntimeout = 10\n'
    )
    return GatewayProcess("--config", str(cfg), *args, workdir=tmp_path)


def test_session_cap_is_exact_across_two_workers(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    gw = serve(tmp_path, sink, "max_sessions_per_ip = 2", "--workers", "2")
    try:
        # Twelve connections: SO_REUSEPORT spreads them over both workers.
        held = [greeting(gw.port, "127.0.0.2") for _ in range(12)]
        codes = [data[:3] for _, data in held]
        assert codes.count(b"220") == 2, codes
        assert codes.count(b"421") == 10, codes
        assert all(
            data == b"421 4.7.0 Too many sessions from 127.0.0.2, try again later\r\n"
            for _, data in held
            if data.startswith(b"421")
        )
        for s, _ in held:
            s.close()
        # The slots come back once the sessions are gone (release is asynchronous).
        deadline = time.monotonic() + 20
        while True:
            again = [greeting(gw.port, "127.0.0.2") for _ in range(2)]
            ok = [d for _, d in again if d.startswith(b"220")]
            for s, _ in again:
                s.close()
            if len(ok) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(ok) == 2
    finally:
        gw.stop()
        sink.stop()


def test_connection_rate_is_exact_across_two_workers(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    gw = serve(tmp_path, sink, "connection_rate = 3\nrate_period = 3600", "--workers", "2")
    try:
        got = []
        for _ in range(10):
            s, data = greeting(gw.port, "127.0.0.3")
            got.append(data[:3])
            s.close()
        assert got.count(b"220") == 3, got
        assert got[:3] == [b"220"] * 3
    finally:
        gw.stop()
        sink.stop()
