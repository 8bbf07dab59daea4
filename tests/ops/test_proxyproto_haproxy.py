"""The PROXY protocol parser and builders against a real HAProxy on loopback.

HAProxy's ``send-proxy`` / ``send-proxy-v2`` (with TLVs) headers must parse to the
real client; headers from our builders must be accepted by HAProxy's
``accept-proxy`` and come back out, re-encoded by HAProxy, with the same addresses.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard.proxyproto import ProxyHeader, build_v1, build_v2, parse
from tests.peers import LOOPBACK, free_port, need, wait_port

HELLO = b"EHLO client.example.org\r\n"


@pytest.fixture
def backend() -> Iterator[socket.socket]:
    """Where HAProxy connects: we read its header here."""
    with socket.create_server((LOOPBACK, 0)) as srv:
        srv.settimeout(15)
        yield srv


def _haproxy(
    tmp_path: Path, backend_port: int, bind_opts: str, server_opts: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
        "  timeout server 30s\n"
        f"frontend fe\n  bind {LOOPBACK}:{port} {bind_opts}\n"
        "  unique-id-format smtpguard-%rt\n  default_backend be\n"
        f"backend be\n  server s {LOOPBACK}:{backend_port} {server_opts}\n"
    )
    proc = subprocess.Popen(
        [need("haproxy"), "-db", "-f", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def _received_header(backend: socket.socket, expect_tail: bytes) -> tuple[ProxyHeader, bytes]:
    """Accept HAProxy's connection; read until the header and ``expect_tail``."""
    conn, _ = backend.accept()
    with conn:
        conn.settimeout(15)
        buf = b""
        header = None
        while header is None or not buf[header.length :].startswith(expect_tail):
            chunk = conn.recv(4096)
            assert chunk, f"connection closed after {buf!r}"
            buf += chunk
            header = header or parse(buf)
        return header, buf[header.length :]


def _through(
    tmp_path: Path,
    backend: socket.socket,
    bind: str,
    server: str,
    sent: bytes,
    source: str = "127.0.0.2",
) -> tuple[ProxyHeader, tuple[str, int], int]:
    proc, port = _haproxy(tmp_path, backend.getsockname()[1], bind, server)
    try:
        wait_port(port, proc)
        if "accept-proxy" not in bind:  # the readiness check went through: consume it
            _received_header(backend, b"")
        with socket.create_connection((LOOPBACK, port), 15, (source, 0)) as c:
            c.sendall(sent)
            header, rest = _received_header(backend, HELLO)
            assert rest.startswith(HELLO)
            return header, c.getsockname(), port
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize(
    ("server_opts", "version"),
    [
        ("send-proxy", 1),
        ("send-proxy-v2", 2),
        ("send-proxy-v2 proxy-v2-options crc32c,unique-id,authority", 2),  # with TLVs
    ],
)
def test_haproxy_headers_parse_to_the_real_client(
    tmp_path: Path, backend: socket.socket, server_opts: str, version: int
) -> None:
    header, client, port = _through(tmp_path, backend, "", server_opts, HELLO)
    assert header.version == version and not header.local
    assert header.source == client and header.dest == (LOOPBACK, port)


@pytest.mark.parametrize("build", [build_v1, build_v2])
@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (("203.0.113.7", 4242), ("198.51.100.25", 25)),
        (("2001:db8::7", 65535), ("2001:db8::25", 25)),
    ],
)
def test_our_headers_are_accepted_by_haproxy(
    tmp_path: Path,
    backend: socket.socket,
    build: object,
    src: tuple[str, int],
    dst: tuple[str, int],
) -> None:
    sent = build(src, dst) + HELLO  # type: ignore[operator]
    header, _client, _port = _through(tmp_path, backend, "accept-proxy", "send-proxy-v2", sent)
    assert (header.source, header.dest) == (src, dst)
