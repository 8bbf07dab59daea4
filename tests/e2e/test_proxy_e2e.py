"""PROXY protocol: accepted from configured load balancers only (HAProxy with
send-proxy-v2 in front), and sent towards the server so it sees the real client."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from smtpguard.proxyproto import build_v1
from tests.peers import LOOPBACK, GatewayProcess, SmtpSink, free_port, need, wait_port

pytestmark = pytest.mark.e2e

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: proxy\r\n\r\nhi\r\n"


def _connects(log: Path) -> list[str]:
    deadline = time.monotonic() + 5
    peers: list[str] = []
    while time.monotonic() < deadline:
        if log.exists():
            peers = []
            for line in log.read_text().splitlines():
                try:  # the gateway may be writing the last line right now
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("event") == "connect":
                    peers.append(obj.get("peer", ""))
            if peers:
                return peers
        time.sleep(0.05)
    return peers


def test_haproxy_send_proxy_v2_in_front(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    log = tmp_path / "p.jsonl"
    gw = GatewayProcess(
        "--upstream",
        sink.address,
        "--proxy-from",
        "127.0.0.1/32",
        "--protocol-log",
        str(log),
        "--protocol-log-format",
        "jsonl",
        workdir=tmp_path,
    )
    hport = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
        "  timeout server 30s\n"
        f"frontend smtp\n  bind {LOOPBACK}:{hport}\n  default_backend gw\n"
        f"backend gw\n  server gw {LOOPBACK}:{gw.port} send-proxy-v2\n"
    )
    hap = subprocess.Popen(
        [need("haproxy"), "-db", "-f", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(hport, hap)
        with smtplib.SMTP(LOOPBACK, hport, timeout=10, source_address=("127.0.0.2", 0)) as s:
            s.sendmail("a@example.org", ["b@example.net"], MSG)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            p.startswith("127.0.0.2:") for p in _connects(log)
        ):
            time.sleep(0.05)
        peers = _connects(log)
        # the session shows the real client behind HAProxy; the readiness probe's
        # connection through HAProxy shows 127.0.0.1, the probe's own address
        assert any(p.startswith("127.0.0.2:") for p in peers), peers
        assert all(p.startswith(("127.0.0.2:", "127.0.0.1:")) for p in peers)
    finally:
        hap.terminate()
        hap.wait(10)
        gw.stop()
        sink.stop()


def test_trusted_peer_without_header_is_dropped(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    gw = GatewayProcess("--upstream", sink.address, "--proxy-from", "127.0.0.0/8", workdir=tmp_path)
    try:
        with socket.create_connection((LOOPBACK, gw.port), 10) as c:
            c.sendall(b"HELO not-a-proxy-header\r\n")
            c.settimeout(10)
            assert c.recv(100) == b""  # aborted, no greeting, nothing relayed
    finally:
        gw.stop()
        sink.stop()


def test_untrusted_peer_cannot_claim_an_address(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    gw = GatewayProcess("--upstream", sink.address, workdir=tmp_path)
    try:
        with socket.create_connection((LOOPBACK, gw.port), 10) as c:
            c.settimeout(10)
            c.recv(1000)
            c.sendall(build_v1(("192.0.2.66", 1234), (LOOPBACK, gw.port)))
            assert c.recv(1000).startswith(b"500 5.5.1")  # just an unknown command
    finally:
        gw.stop()
        sink.stop()


class _Record:
    def __init__(self) -> None:
        self.proxy: list[Any] = []

    async def handle_PROXY(self, server: Any, session: Any, envelope: Any, proxy_data: Any) -> bool:
        self.proxy.append(proxy_data)
        return True


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_upstream_gets_a_proxy_header(tmp_path: Path, version: str) -> None:
    rec = _Record()
    port = free_port()
    controller = Controller(rec, hostname=LOOPBACK, port=port, proxy_protocol_timeout=5)
    controller.start()
    try:
        gw = GatewayProcess(
            "--upstream", f"{LOOPBACK}:{port}", "--upstream-proxy", version, workdir=tmp_path
        )
        try:
            with smtplib.SMTP(LOOPBACK, gw.port, timeout=10, source_address=("127.0.0.3", 0)) as s:
                s.noop()
        finally:
            gw.stop()
        real = [p for p in rec.proxy if p is not None and str(p.src_addr) == "127.0.0.3"]
        assert real, rec.proxy
    finally:
        controller.stop()


def test_proxy_local_header_keeps_the_balancer_address(tmp_path: Path) -> None:
    """A LOCAL header (health checks) means: use the connection's own addresses."""
    from smtpguard.proxyproto import V2_SIGNATURE

    sink = SmtpSink(tmp_path)
    log = tmp_path / "p.jsonl"
    gw = GatewayProcess(
        "--upstream",
        sink.address,
        "--proxy-from",
        "127.0.0.0/8",
        "--protocol-log",
        str(log),
        "--protocol-log-format",
        "jsonl",
        workdir=tmp_path,
    )
    try:
        with socket.create_connection(
            (LOOPBACK, gw.port), 10, source_address=("127.0.0.4", 0)
        ) as c:
            c.sendall(V2_SIGNATURE + b"\x20\x00\x00\x00" + b"NOOP\r\n")
            c.settimeout(10)
            data = b""
            while data.count(b"\r\n") < 2:
                chunk = c.recv(1000)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"220 ") and b"\r\n250" in data
            c.sendall(b"QUIT\r\n")
            c.recv(100)
        assert any(p.startswith("127.0.0.4:") for p in _connects(log))
    finally:
        gw.stop()
        sink.stop()
