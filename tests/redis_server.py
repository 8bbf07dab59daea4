"""A private ``redis-server`` on a loopback port for tests (Debian package
redis-server, installed by .ci/run): no persistence, no config file, stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.peers import LOOPBACK, free_port, need, wait_port


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="smtpguard-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Start (again, on the same port after :meth:`stop`)."""
        self.proc = subprocess.Popen(
            [
                need("redis-server"),
                "--bind",
                LOOPBACK,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc)
        deadline = time.monotonic() + 10
        while self.command("PING") != "+PONG" and time.monotonic() < deadline:
            time.sleep(0.05)  # accepting, but still loading

    def command(self, *words: str) -> str:
        """One inline command, its first reply line (e.g. ``+PONG``, ``:3``)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), 5) as s:
                s.sendall(" ".join(words).encode() + b"\r\n")
                return s.makefile("rb").readline().decode().rstrip("\r\n")
        except OSError as exc:
            return f"-{exc}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
