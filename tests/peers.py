"""Start real peers on loopback for end-to-end tests: smtp-sink, the gateway CLI.

Nothing here assumes a peer already runs: each helper starts its process on a free
loopback port, waits until it accepts connections and stops it afterwards. A missing
system binary is an error, not a skip: CI installs them (see .ci/run).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"process exited early ({proc.returncode}): {out}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port}")


def need(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{binary} not installed: run .ci/run (installs postfix, swaks)")
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m smtpguard ARGS`` to completion (for commands expected to exit)."""
    return subprocess.run(
        [sys.executable, "-m", "smtpguard", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


def swaks(server: str, *args: str, to: str = "b@example.net") -> str:
    """Send one message with swaks through ``server``; assert it succeeded and return
    the transcript (what swaks printed)."""
    out = subprocess.run(
        [
            need("swaks"),
            "--server",
            server,
            "--from",
            "a@example.org",
            "--to",
            to,
            "--timeout",
            "20",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def self_signed_cert(directory: Path) -> tuple[str, str]:
    """A throw-away self-signed certificate for localhost: (certfile, keyfile)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            need("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


DEPLOY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "smtpguard.toml"


def deploy_config(
    directory: Path, *, tls: Path | None = None, logs: Path | None = None, **addresses: str
) -> Path:
    """deploy/smtpguard.toml as written, but with its certificate directory
    (/etc/smtpguard/tls) moved to ``tls``, its log directory (/var/log/smtpguard) to
    ``logs`` and ``listen``/``upstream``/``metrics_listen`` set to ``addresses``, so it
    can run on loopback; the copy is written into ``directory``."""
    text = DEPLOY_CONFIG.read_text()
    if tls is not None:
        text = text.replace("/etc/smtpguard/tls", str(tls))
    if logs is not None:
        text = text.replace("/var/log/smtpguard", str(logs))
    for key, value in addresses.items():
        text, n = re.subn(rf'(?m)^{key} = "[^"]*"', f'{key} = "{value}"', text)
        assert n == 1, key
    path = directory / "smtpguard.toml"
    path.write_text(text)
    return path


def smtp_source(address: str, sessions: int, messages: int, size: int) -> None:
    """Postfix smtp-source: ``messages`` messages of ``size`` octets, ``sessions``
    at a time; raises if it fails."""
    out = subprocess.run(
        [
            need("smtp-source"),
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            "a@example.org",
            "-t",
            "b@example.net",
            address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


class SmtpSink:
    """Postfix smtp-sink dumping each message to its own file."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        # smtp-sink drops root privileges to nobody, who cannot enter pytest's private
        # tmp tree: dump into a directory of its own under the system temp dir.
        self.dumps = Path(tempfile.mkdtemp(prefix="smtpguard-sink-"))
        os.chmod(self.dumps, 0o777)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [
                need("smtp-sink"),
                *user,
                *extra,
                "-d",
                f"{self.dumps}/m.",
                f"{LOOPBACK}:{self.port}",
                "256",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dumps.iterdir())]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dumps, ignore_errors=True)


class GatewayProcess:
    """``smtpguard serve`` as a subprocess, exactly as an administrator runs it."""

    def __init__(self, *args: str, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpguard",
                "serve",
                "--listen",
                f"{LOOPBACK}:{self.port}",
                *args,
                # One process unless a test asks for more: per-process state (access
                # counters, the order of log lines) stays predictable.
                *(() if "--workers" in args else ("--workers", "1")),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        wait_port(self.port, self.proc)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def startup_block(self) -> str:
        """The start-up block, read to its last line (the port may accept
        connections before every worker serves and the block is printed)."""
        assert self.proc.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("  stop with"):
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            if line.startswith("{"):  # log_format = "json": the block is one object
                break
        return "".join(lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out = self.proc.stdout.read().decode() if self.proc.stdout else ""
        return self.proc.returncode, out


@contextlib.contextmanager
def sink_and_gateway(
    workdir: Path, *args: str, sinkdir: Path | None = None
) -> Iterator[tuple[SmtpSink, GatewayProcess]]:
    """smtp-sink (its files in ``sinkdir``, default ``workdir``) with ``smtpguard
    serve --upstream <sink> ARGS`` run in ``workdir`` in front of it; both are
    stopped afterwards."""
    sink = SmtpSink(sinkdir if sinkdir is not None else workdir)
    try:
        gw = GatewayProcess("--upstream", sink.address, *args, workdir=workdir)
        try:
            yield sink, gw
        finally:
            gw.stop()
    finally:
        sink.stop()


@contextlib.contextmanager
def running(obj: SmtpSink | GatewayProcess) -> Iterator[SmtpSink | GatewayProcess]:
    try:
        yield obj
    finally:
        obj.stop()
