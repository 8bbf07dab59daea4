"""The seed article's symptom, reproduced with the PIX emulation and absent with the
real gateway: a sender whose CRLF.CRLF crosses TCP segments gets no reply after the
dot, times out and re-sends, again and again; through smtpguard it gets one 250 and
the message lands once."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, sink_and_gateway

pytestmark = pytest.mark.e2e

BODY = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: seed\r\n\r\nhello\r\n"


class Sender:
    """A sending MTA in miniature: one delivery attempt per connection, the end of
    data written as its own TCP segment (as when the last write of a message falls on
    a segment boundary), a timeout waiting for the final reply, then a retry."""

    def __init__(self, port: int, reply_timeout: float) -> None:
        self.port = port
        self.reply_timeout = reply_timeout
        self.log: list[str] = []

    def _reply(self, sock: socket.socket) -> bytes:
        buf = b""
        while not (buf.endswith(b"\r\n") and buf.split(b"\r\n")[-2][3:4] in (b" ", b"")):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def attempt(self) -> bool:
        with socket.create_connection((LOOPBACK, self.port), 10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(10)
            self._reply(s)
            for cmd in (
                b"HELO sender.example",
                b"MAIL FROM:<a@example.org>",
                b"RCPT TO:<b@example.net>",
                b"DATA",
            ):
                s.sendall(cmd + b"\r\n")
                self._reply(s)
            s.sendall(BODY)
            time.sleep(0.05)
            s.sendall(b".\r\n")  # CRLF . CRLF now spans two segments
            s.settimeout(self.reply_timeout)
            try:
                final = self._reply(s)
            except TimeoutError:
                self.log.append("no reply after the dot: timed out")
                return False
            self.log.append(final.decode().strip())
            s.sendall(b"QUIT\r\n")
            return final.startswith(b"250")

    def deliver(self, tries: int) -> int:
        """Try up to ``tries`` times; return the attempt that succeeded (0: none)."""
        for n in range(1, tries + 1):
            if self.attempt():
                return n
        return 0


def test_split_bug_emulation_shows_the_seed_symptom(tmp_path: Path) -> None:
    args = ("--emulate", "pix", "--emulate-bug", "split-eod")
    with sink_and_gateway(tmp_path, *args) as (sink, gw):
        sender = Sender(gw.port, reply_timeout=1.0)
        assert sender.deliver(tries=3) == 0
        assert sender.log == ["no reply after the dot: timed out"] * 3  # re-sent, in vain
        time.sleep(0.3)
        assert sink.messages() == []
        _, out = gw.stop()
        assert "PIX EMULATION" in out and "split-eod" in out  # loudly labelled


def test_real_gateway_answers_the_split_dot_at_once(tmp_path: Path) -> None:
    with sink_and_gateway(tmp_path) as (sink, gw):
        sender = Sender(gw.port, reply_timeout=10.0)
        assert sender.deliver(tries=3) == 1
        assert sender.log[0].startswith("250")
        deadline = time.monotonic() + 5
        while not sink.messages() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sink.messages()) == 1


def test_emulation_without_the_bug_passes_the_split_dot(tmp_path: Path) -> None:
    with sink_and_gateway(tmp_path, "--emulate", "pix") as (_, gw):
        assert Sender(gw.port, reply_timeout=10.0).deliver(tries=1) == 1
