"""Peers for the probe tests, all on loopback, all started by the fixtures.

``PEERS`` maps a target name to a context-manager factory yielding ``(host, port)``.
Adding a target (e.g. the smtpguard gateway in mailguard mode) means one entry here
and one ``pytest.param`` in ``test_probe_targets.TARGETS``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.probe.fakes import RFC821, SEED_BANNER, Behaviour, FakeSmtpServer

SMTP_SINK = "/usr/sbin/smtp-sink"

Peer = Callable[[Path], AbstractContextManager[tuple[str, int]]]


def require_binary(path: str) -> str:
    """Fail (not skip) when a system binary the test needs is missing: CI has it."""
    found = shutil.which(path)
    if found is None:
        pytest.fail(f"{path} is required for this test (Debian package postfix/openssl)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"peer exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


@contextlib.contextmanager
def smtp_sink(*options: str) -> Iterator[tuple[str, int]]:
    binary = require_binary(SMTP_SINK)
    port = free_port()
    proc = subprocess.Popen(
        [binary, *options, "-u", "root", f"127.0.0.1:{port}", "100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening("127.0.0.1", port, proc)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)


def postfix(**settings: str) -> Peer:
    @contextlib.contextmanager
    def start(_tmp: Path) -> Iterator[tuple[str, int]]:
        from tests.postfix import PrivatePostfix

        with PrivatePostfix("smtpguard-probe", **settings) as pf:
            yield "127.0.0.1", pf.port

    return start


def gateway(*args: str) -> Peer:
    """``smtpguard serve`` (the real CLI) in front of smtp-sink."""

    @contextlib.contextmanager
    def start(tmp: Path) -> Iterator[tuple[str, int]]:
        from tests.peers import GatewayProcess, SmtpSink

        sink = SmtpSink(tmp)
        try:
            gw = GatewayProcess("--upstream", sink.address, *args, workdir=tmp)
            try:
                yield "127.0.0.1", gw.port
            finally:
                gw.stop()
        finally:
            sink.stop()

    return start


def fake(behaviour: Behaviour) -> Peer:
    def start(_tmp: Path) -> AbstractContextManager[tuple[str, int]]:
        return FakeSmtpServer(behaviour)

    return start


def tls_context(tmp: Path) -> ssl.SSLContext:
    """A server context with a throw-away self-signed certificate."""
    from tests.peers import self_signed_cert

    cert, key = self_signed_cert(tmp)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


PIX_FILTER = {"allowed": RFC821, "banner": SEED_BANNER}

PEERS: dict[str, Peer] = {
    "smtp-sink": lambda _tmp: smtp_sink(),
    # smtp-sink's own PIX imitation: masked greeting, no ESMTP.
    "smtp-sink-pix": lambda _tmp: smtp_sink("-P"),
    "fake-clean": fake(Behaviour()),
    # The seed article: masked banner, EHLO -> 500, split end-of-data dropped.
    "fake-seed-pix": fake(Behaviour(**PIX_FILTER, split_eod_bug=True)),
    # The same filter without the bug.
    "fake-pix-fixed": fake(Behaviour(**PIX_FILTER)),
    # PIX 6.x rewriting disallowed commands (EHLO too) to NOOP: EHLO gets a bare OK.
    "fake-pix-noop": fake(Behaviour(**PIX_FILTER, disallowed="noop")),
    # PIX 7.x/ASA rewriting to XXXX, the server names the verb in its 500.
    "fake-pix-xxxx": fake(Behaviour(**PIX_FILTER, disallowed="xxxx")),
    # ASA esmtp-style: clear banner, PIPELINING offered, but one command per segment.
    "fake-lockstep": fake(Behaviour(lockstep=True)),
    # Receivers that take bare-LF / bare-CR end-of-data (SMTP smuggling).
    "fake-lf-eod": fake(Behaviour(eod="lf")),
    "fake-cr-eod": fake(Behaviour(eod="cr")),
    # A receiver that drops NUL bytes before looking for the end of data.
    "fake-nul-eod": fake(Behaviour(eod="nul")),
    # (b) the gateway in mailguard mode: a Mailguard-style filter by design (EHLO 500),
    # but with a clear generic banner, a working split end of data and no smuggling.
    "gateway-mailguard": gateway(),
    # (c) the gateway in esmtp mode: EHLO with filtered keywords, nothing to flag.
    "gateway-esmtp": gateway("--mode", "esmtp"),
    # (d) the gateway's PIX 6.x lab emulation, without and with CSCds90792.
    "gateway-emulate-pix": gateway("--emulate", "pix"),
    "gateway-emulate-pix-bug": gateway("--emulate", "pix", "--emulate-bug", "split-eod"),
    # A real Postfix 3.x with its defaults (bare LF is a line end unless patched/set).
    "postfix": postfix(),
    # The same with the SMTP smuggling fix switched on: bare LF is refused. Its
    # default exclusions ($mynetworks) would exempt loopback, so they are emptied.
    "postfix-strict": postfix(
        smtpd_forbid_bare_newline="yes", smtpd_forbid_bare_newline_exclusions=""
    ),
}


@pytest.fixture
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Indirectly parametrized with a ``PEERS`` name."""
    with PEERS[request.param](tmp_path) as address:
        yield address
