"""End to end on loopback: the gateway CLI between real SMTP peers.

Upstream: Postfix ``smtp-sink``. Clients: ``smtp-source``, ``swaks``, ``smtplib`` and a
raw socket that sends the end of data one byte per TCP segment.
"""

from __future__ import annotations

import json
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers import (
    LOOPBACK,
    GatewayProcess,
    SmtpSink,
    free_port,
    run_cli,
    smtp_source,
    swaks,
    wait_port,
)

pytestmark = pytest.mark.e2e

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: e2e\r\n\r\nhello\r\n"


def _wait_messages(sink: SmtpSink, n: int, timeout: float = 10) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = sink.messages()
        if len(msgs) >= n:
            return msgs
        time.sleep(0.05)
    return sink.messages()


class RawClient:
    """A line-at-a-time SMTP client on a raw socket with TCP_NODELAY."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), 10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self) -> bytes:
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if (len(line) >= 4 and line[3:4] == b" ") or len(line) == 3:
                    out = b"\r\n".join(lines[: i + 1])
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return out
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send_bytewise(self, data: bytes, gap: float = 0.002) -> None:
        for b in data:
            self.sock.send(bytes([b]))
            time.sleep(gap)

    def close(self) -> None:
        self.sock.close()


def test_smtplib_through_mailguard_falls_back_to_helo(
    gateway: GatewayProcess, sink: SmtpSink, tmp_path: Path
) -> None:
    with smtplib.SMTP(LOOPBACK, gateway.port, timeout=10) as s:
        refused = s.sendmail("a@example.org", ["b@example.net"], MSG)
        assert refused == {}
        assert s.helo_resp is not None  # EHLO failed, smtplib fell back to HELO
        assert not s.does_esmtp
    msgs = _wait_messages(sink, 1)
    assert len(msgs) == 1 and b"Subject: e2e" in msgs[0]
    # the session's lines are written when the gateway sees the connection close
    deadline = time.monotonic() + 10
    log = ""
    while ">>> 221" not in log and time.monotonic() < deadline:
        log = (tmp_path / "proto.log").read_text()
        time.sleep(0.05)
    assert "<<< ehlo" in log.lower() and ">>> 500 5.5.1 Unrecognized command" in log
    assert "A connection was accepted from 127.0.0.1" in log


def test_swaks_through_mailguard(gateway: GatewayProcess, sink: SmtpSink) -> None:
    transcript = swaks(gateway.address)
    assert "500 5.5.1 Unrecognized command" in transcript
    assert "-> HELO" in transcript
    assert "220 gw.example.test ESMTP" in transcript
    assert len(_wait_messages(sink, 1)) == 1


def test_smtp_source_many_sessions(gateway: GatewayProcess, sink: SmtpSink) -> None:
    smtp_source(gateway.address, 5, 40, 2000)
    assert len(_wait_messages(sink, 40)) == 40


def test_end_of_data_one_byte_per_segment(gateway: GatewayProcess, sink: SmtpSink) -> None:
    """The seed's bug: CRLF.CRLF split over TCP segments must still end the message."""
    c = RawClient(gateway.port)
    assert c.reply().startswith(b"220 ")
    assert c.cmd(b"HELO client.example").startswith(b"250")
    assert c.cmd(b"MAIL FROM:<a@example.org>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<b@example.net>").startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")
    c.sock.sendall(MSG)
    c.send_bytewise(b"\r\n.\r\n")
    final = c.reply()
    assert final.startswith(b"250"), final
    assert c.cmd(b"QUIT").startswith(b"221")
    c.close()
    msgs = _wait_messages(sink, 1)
    assert len(msgs) == 1 and msgs[0].count(b"hello") == 1


def test_whole_session_bytewise(gateway: GatewayProcess, sink: SmtpSink) -> None:
    c = RawClient(gateway.port)
    c.reply()
    script = (
        b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        + MSG
        + b".\r\nQUIT\r\n"
    )
    c.send_bytewise(script, gap=0.0005)
    replies = [c.reply() for _ in range(6)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354", b"250", b"221"]
    assert len(_wait_messages(sink, 1)) == 1


def test_bare_lf_smuggling_refused_and_session_continues(
    gateway: GatewayProcess, sink: SmtpSink
) -> None:
    c = RawClient(gateway.port)
    c.reply()
    c.cmd(b"HELO c")
    c.cmd(b"MAIL FROM:<a@example.org>")
    c.cmd(b"RCPT TO:<b@example.net>")
    assert c.cmd(b"DATA").startswith(b"354")
    c.sock.sendall(
        b"Subject: smuggle\r\n\r\nx\n.\nMAIL FROM:<evil@example.org>\r\n"
        b"RCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n"
    )
    assert c.reply().startswith(b"550 5.6.0 Message refused: bare LF")
    # the session goes on over a fresh upstream connection
    assert c.cmd(b"MAIL FROM:<a@example.org>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<b@example.net>").startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")
    c.sock.sendall(b"Subject: second\r\n\r\nfine\r\n.\r\n")
    assert c.reply().startswith(b"250")
    c.cmd(b"QUIT")
    c.close()
    msgs = _wait_messages(sink, 1)
    time.sleep(0.3)
    msgs = sink.messages()
    assert len(msgs) == 1
    assert b"Subject: second" in msgs[0] and b"smuggled" not in msgs[0]


def test_jsonl_log_has_four_directions(sink: SmtpSink, gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "p.jsonl"
    g = gateway_factory(
        "--upstream", sink.address, "--protocol-log", str(log), "--protocol-log-format", "jsonl"
    )
    with smtplib.SMTP(LOOPBACK, g.port, timeout=10) as s:
        s.sendmail("a@example.org", ["b@example.net"], MSG)
    g.stop()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    dirs = {e.get("dir") for e in events} - {None}
    assert dirs == {"client>gw", "gw>server", "server>gw", "gw>client"}
    assert {e["event"] for e in events} >= {"connect", "command", "reply", "data", "disconnect"}
    assert not any("hello" in json.dumps(e) for e in events)  # content never logged
    assert [e["size"] for e in events if e["event"] == "data"] == [len(MSG) + 3]


def test_embedded_default_mailbox(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    g = gateway_factory("--maildir", str(tmp_path / "mail"))
    with smtplib.SMTP(LOOPBACK, g.port, timeout=10) as s:
        s.sendmail("a@example.org", ["b@example.net"], MSG)
    code, out = g.stop()
    assert code == 0
    assert "mail lands in" in out and "swaks --server" in out
    stored = list((tmp_path / "mail" / "new").iterdir())
    assert len(stored) == 1
    body = stored[0].read_bytes()
    assert b"Return-Path: <a@example.org>" in body and b"hello" in body


def test_drain_lets_transaction_finish(gateway: GatewayProcess, sink: SmtpSink) -> None:
    c = RawClient(gateway.port)
    c.reply()
    c.cmd(b"HELO c")
    c.cmd(b"MAIL FROM:<a@example.org>")
    c.cmd(b"RCPT TO:<b@example.net>")
    gateway.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert c.cmd(b"DATA").startswith(b"354")
    c.sock.sendall(MSG + b".\r\n")
    assert c.reply().startswith(b"250")
    assert c.cmd(b"NOOP").startswith(b"421 4.3.2")
    c.close()
    assert gateway.proc.wait(15) == 0
    assert len(_wait_messages(sink, 1)) == 1


def test_unreachable_upstream_exits_2_with_one_line() -> None:
    port = free_port()
    r = run_cli(
        "serve", "--listen", f"{LOOPBACK}:{free_port()}", "--upstream", f"{LOOPBACK}:{port}"
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not reachable" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--listen", "nonsense"], "--listen"),
        (["--upstream", "h:99999"], "--upstream"),
        (["--timeout", "bogus=3"], "--timeout"),
        (["--banner", ""], "--banner"),
        (["--mode", "x"], "invalid choice"),
    ],
)
def test_bad_flags_exit_2(args: list[str], needle: str) -> None:
    r = run_cli("serve", *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_upstream_down_while_running_gives_421(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = SmtpSink(tmp_path)
    g = gateway_factory("--upstream", s.address)
    s.stop()
    c = RawClient(g.port)
    assert c.reply().startswith(b"421 4.4.1")
    c.close()


def test_sink_command_runs_alone(tmp_path: Path) -> None:
    port = free_port()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtpguard",
            "sink",
            "--listen",
            f"{LOOPBACK}:{port}",
            "--maildir",
            str(tmp_path / "box"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, p)
        with smtplib.SMTP(LOOPBACK, port, timeout=10) as s:
            s.sendmail("a@example.org", ["b@example.net"], MSG)
        assert len(list((tmp_path / "box" / "new").iterdir())) == 1
    finally:
        p.terminate()
        p.wait(10)


def test_two_workers_share_the_port(sink: SmtpSink, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    g = gateway_factory("--upstream", sink.address, "--workers", "2")
    smtp_source(g.address, 10, 60, 500)
    assert len(_wait_messages(sink, 60)) == 60
    code, _ = g.stop()
    assert code == 0


def test_two_workers_with_embedded_mailbox(gateway_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    g = gateway_factory("--maildir", str(tmp_path / "mail"), "--workers", "2")
    for _ in range(6):
        with smtplib.SMTP(LOOPBACK, g.port, timeout=10) as s:
            s.sendmail("a@example.org", ["b@example.net"], MSG)
    code, _ = g.stop()
    assert code == 0
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 6
