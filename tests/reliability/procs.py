"""Helpers for the reliability suite: the gateway as a subprocess with stderr in a
file (read while it runs), its children and open file descriptors from /proc, and a
raw SMTP client. Everything talks to loopback only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.peers import LOOPBACK, free_port, wait_port

MSG = b"Subject: reliability\r\n\r\nhello\r\n"


class Serve:
    """``smtpguard serve --listen <free port> ARGS`` in its own process group."""

    def __init__(self, workdir: Path, *args: str, wait: bool = True) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.err_path = workdir / f"serve-{self.port}.err"
        self.out_path = workdir / f"serve-{self.port}.out"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpguard",
                "serve",
                "--listen",
                f"{LOOPBACK}:{self.port}",
                *args,
            ],
            stdout=self.out_path.open("wb"),
            stderr=self.err_path.open("wb"),
            cwd=workdir,
            start_new_session=True,  # a Ctrl-C can be sent to its whole group
        )
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float = 20) -> None:
        wait_port(self.port, None, timeout)
        # The start-up block is printed once every worker serves.
        until(lambda: "stop with" in self.stdout(), timeout, "start-up block")

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def children(self) -> list[int]:
        return children(self.proc.pid)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def until(check: Callable[[], object], timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Client:
    """A raw SMTP client reading one reply at a time."""

    def __init__(self, port: int, timeout: float = 20) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout)
        self.buf = b""

    def reply(self) -> bytes:
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    out = b"\r\n".join(lines[: i + 1]) + b"\r\n"
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return out
            data = self.sock.recv(65536)
            if not data:
                out, self.buf = self.buf, b""
                return out
            self.buf += data

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def transaction_open(self) -> None:
        assert self.reply().startswith(b"220")
        assert self.cmd(b"HELO reliability.test").startswith(b"250")
        assert self.cmd(b"MAIL FROM:<a@example.org>").startswith(b"250")
        assert self.cmd(b"RCPT TO:<b@example.net>").startswith(b"250")

    def close(self) -> None:
        self.sock.close()


def send_one(port: int) -> bytes:
    """A whole session; returns the reply to the end of data."""
    c = Client(port)
    try:
        c.transaction_open()
        assert c.cmd(b"DATA").startswith(b"354")
        c.sock.sendall(MSG + b".\r\n")
        return c.reply()
    finally:
        c.close()
