"""``smtpguard serve --config`` as a real process on loopback: access control on the
wire and SIGHUP reload (one process and with workers).

Clients bind to 127.0.0.2 to be a different client address than 127.0.0.1; both are
loopback. Waits are for a log line or a reply, bounded, never timed assertions.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, SmtpSink, free_port, wait_port

pytestmark = pytest.mark.e2e

OTHER_CLIENT = "127.0.0.2"


class Serve:
    """``smtpguard serve --config FILE`` with its output collected line by line."""

    def __init__(self, config: Path, *args: str) -> None:
        self.port = free_port()
        self.config = config
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpguard",
                "serve",
                "--config",
                str(config),
                "--listen",
                f"{LOOPBACK}:{self.port}",
                *args,
                # One process unless a test asks for more: per-process state (access
                # counters, the order of log lines) stays predictable.
                *(() if "--workers" in args else ("--workers", "1")),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=config.parent,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port, None)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_lines(self, needle: str, count: int = 1, timeout: float = 20) -> list[str]:
        def found() -> list[str]:
            return [ln for ln in self.lines if needle in ln]

        with self._cond:
            self._cond.wait_for(lambda: len(found()) >= count, timeout)
            hits = found()
        assert len(hits) >= count, f"{needle!r} x{count} not in output:\n" + "\n".join(self.lines)
        return hits

    def reload(self, text: str, needle: str, workers: int = 1) -> list[str]:
        """Write the config, SIGHUP, wait until ``workers`` distinct processes log
        ``needle``. A process that is still starting may not handle SIGHUP yet, so
        the signal is repeated (a reload is idempotent)."""
        start = len(self.lines)
        self.config.write_text(text)
        deadline = time.monotonic() + 20
        while True:
            self.proc.send_signal(signal.SIGHUP)
            with self._cond:
                self._cond.wait_for(lambda: len(self._pids(needle, start)) >= workers, 1.0)
                hits = [ln for ln in self.lines[start:] if needle in ln]
                if len(self._pids(needle, start)) >= workers:
                    return hits
            assert time.monotonic() < deadline, f"no {needle!r}:\n" + "\n".join(self.lines)

    def _pids(self, needle: str, start: int) -> set[str]:
        return {
            ln.partition("(pid ")[2].partition(")")[0] for ln in self.lines[start:] if needle in ln
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Client:
    def __init__(self, port: int, source: str = LOOPBACK) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), 10, source_address=(source, 0))
        self.buf = b""

    def reply(self) -> bytes:
        """One whole reply (all lines of a multi-line one), without the last CRLF."""
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) == 3 or line[3:4] == b" ":
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return b"\r\n".join(lines[: i + 1])
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def at_eof(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[Serve] = []

    def start(text: str, *args: str) -> Serve:
        cfg = tmp_path / "smtpguard.toml"
        cfg.write_text(text)
        s = Serve(cfg, *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def config(sink: SmtpSink, hostname: str, extra: str = "", mode: str = "mailguard") -> str:
    return (
        f'mode = "{mode}"\nhostname = "{hostname}"\n[gateway]\nupstream = "{sink.address}"\n{extra}'
    )


def _loopback_alias_works() -> bool:
    with contextlib.suppress(OSError), socket.socket() as s:
        s.bind((OTHER_CLIENT, 0))
        return True
    return False


needs_alias = pytest.mark.skipif(not _loopback_alias_works(), reason="no 127.0.0.2")


@needs_alias
def test_denied_network_gets_554_and_others_pass(serve, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    g = serve(config(sink, "gw.example.test", f'[access]\ndeny = ["{OTHER_CLIENT}/32"]\n'))
    denied = Client(g.port, OTHER_CLIENT)
    reply = denied.reply()
    assert reply == b"554 5.7.1 Access denied: 127.0.0.2 may not connect here"
    assert denied.at_eof()
    denied.close()
    ok = Client(g.port)
    assert ok.reply() == b"220 gw.example.test ESMTP"
    assert ok.cmd(b"QUIT").startswith(b"221")
    ok.close()


@needs_alias
def test_allow_list_and_per_address_session_cap(serve, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    g = serve(
        config(
            sink,
            "gw.example.test",
            f'[access]\nallow = ["{LOOPBACK}/32"]\nmax_sessions_per_ip = 1\n',
        )
    )
    other = Client(g.port, OTHER_CLIENT)
    assert other.reply().startswith(b"554 5.7.1")
    other.close()
    first = Client(g.port)
    assert first.reply().startswith(b"220 ")
    second = Client(g.port)
    assert second.reply() == b"421 4.7.0 Too many sessions from 127.0.0.1, try again later"
    assert second.at_eof()
    second.close()
    assert first.cmd(b"QUIT").startswith(b"221")
    assert first.at_eof()
    first.close()
    # The slot is free again once the first session is gone.
    deadline = time.monotonic() + 10
    while True:
        third = Client(g.port)
        reply = third.reply()
        third.close()
        if reply.startswith(b"220 ") or time.monotonic() > deadline:
            break
    assert reply.startswith(b"220 ")


def test_connection_rate_limit(serve, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    g = serve(
        config(sink, "gw.example.test", "[access]\nconnection_rate = 2\nrate_period = 3600\n")
    )
    # wait_port's probe connection took one token already.
    c = Client(g.port)
    assert c.reply().startswith(b"220 ")
    c.close()
    refused = Client(g.port)
    assert refused.reply() == b"421 4.7.0 Too many connections from 127.0.0.1, try again later"
    refused.close()


@needs_alias
def test_sighup_reload_applies_to_new_sessions_only(serve, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    g = serve(config(sink, "old.example.test"))
    in_flight = Client(g.port)
    assert in_flight.reply() == b"220 old.example.test ESMTP"
    assert in_flight.cmd(b"EHLO client.example").startswith(b"500 ")  # mailguard mode

    new_text = config(
        sink, "new.example.test", f'[access]\ndeny = ["{OTHER_CLIENT}/32"]\n', mode="esmtp"
    )
    g.reload(new_text, "SG-CONFIG-RELOADED")

    fresh = Client(g.port)
    assert fresh.reply() == b"220 new.example.test ESMTP"
    assert fresh.cmd(b"EHLO client.example").startswith(b"250")  # esmtp mode now
    assert fresh.cmd(b"QUIT").startswith(b"221")
    fresh.close()
    denied = Client(g.port, OTHER_CLIENT)
    assert denied.reply().startswith(b"554 5.7.1")
    denied.close()

    # The session that started before the reload keeps its policy and is not dropped.
    assert in_flight.cmd(b"EHLO client.example").startswith(b"500 ")
    assert in_flight.cmd(b"HELO client.example").startswith(b"250")
    assert in_flight.cmd(b"QUIT").startswith(b"221")
    in_flight.close()

    # An invalid file is refused with a located one-line message; the old one stays.
    bad = new_text.replace('mode = "esmtp"', 'mode = "esmtp"\nmax_pending = "many"')
    refused = g.reload(bad, "SG-CONFIG-REFUSED")[0]
    assert f'{g.config}:2: max_pending: got "many", expected an integer >= 1' in refused
    after = Client(g.port)
    assert after.reply() == b"220 new.example.test ESMTP"
    after.close()
    assert g.proc.poll() is None


def test_sighup_with_workers_reloads_every_worker(serve, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    g = serve(config(sink, "old.example.test"), "--workers", "2")
    g.reload(config(sink, "new.example.test"), "SG-CONFIG-RELOADED", workers=2)
    for _ in range(8):  # SO_REUSEPORT spreads these over both workers
        c = Client(g.port)
        assert c.reply() == b"220 new.example.test ESMTP"
        c.close()
    g.reload("mode = 3\n", "SG-CONFIG-REFUSED", workers=2)
    c = Client(g.port)
    assert c.reply() == b"220 new.example.test ESMTP"
    c.close()
    assert g.proc.poll() is None


@needs_alias
def test_normalize_only_for_listed_networks(serve, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    g = serve(
        config(sink, "gw.example.test", f'[access]\nnormalize_networks = ["{OTHER_CLIENT}/32"]\n')
    )
    body = b"Subject: bare\r\n\r\nline one\nline two\r\n.\r\n"

    def send(source: str) -> bytes:
        c = Client(g.port, source)
        assert c.reply().startswith(b"220 ")
        assert c.cmd(b"HELO client.example").startswith(b"250")
        assert c.cmd(b"MAIL FROM:<a@example.org>").startswith(b"250")
        assert c.cmd(b"RCPT TO:<b@example.net>").startswith(b"250")
        assert c.cmd(b"DATA").startswith(b"354")
        c.sock.sendall(body)
        reply = c.reply()
        c.cmd(b"QUIT")
        c.close()
        return reply

    assert send(LOOPBACK).startswith(b"550 5.6.0")  # everyone else: rejected
    assert send(OTHER_CLIENT).startswith(b"250")  # the listed network: normalised
    deadline = time.monotonic() + 10
    while not sink.messages() and time.monotonic() < deadline:
        time.sleep(0.05)
    (msg,) = sink.messages()
    assert b"line one\nline two\n" in msg  # smtp-sink stores LF line ends
