"""STARTTLS through the gateway with real clients: terminate (swaks --tls, smtplib),
passthrough, and the gateway's own STARTTLS towards a TLS-capable server."""

from __future__ import annotations

import re
import smtplib
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.peers import (
    LOOPBACK,
    GatewayProcess,
    SmtpSink,
    free_port,
    run_cli,
    self_signed_cert,
    sink_and_gateway,
    swaks,
)

pytestmark = pytest.mark.e2e

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: tls\r\n\r\nsecret\r\n"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


class Recorder:
    """aiosmtpd handler remembering each message and whether it came over TLS."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.original_content, session.ssl is not None))
        return "250 2.0.0 Ok: stored"


@pytest.fixture
def tls_server(cert: tuple[str, str]) -> Iterator[tuple[int, Recorder]]:
    """A TLS-capable upstream (aiosmtpd offering STARTTLS) on loopback."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    rec = Recorder()
    port = free_port()
    controller = Controller(
        rec,
        hostname=LOOPBACK,
        port=port,
        tls_context=ctx,
        require_starttls=False,
        ident="tls-upstream",
    )
    controller.start()
    try:
        yield port, rec
    finally:
        controller.stop()


def terminate(cert: tuple[str, str]) -> tuple[str, ...]:
    """serve flags for esmtp mode with STARTTLS terminated with ``cert``."""
    return (
        "--mode",
        "esmtp",
        "--starttls",
        "terminate",
        "--tls-cert",
        cert[0],
        "--tls-key",
        cert[1],
    )


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _wait(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_swaks_tls_through_terminate(tmp_path: Path, cert: tuple[str, str]) -> None:
    with sink_and_gateway(tmp_path, *terminate(cert)) as (sink, gw):
        transcript = swaks(gw.address, "--tls")
        assert "220 2.0.0 Ready to start TLS" in transcript
        assert "TLS started" in transcript
        _wait(lambda: len(sink.messages()) == 1)
        assert len(sink.messages()) == 1


def _starttls_counted(metrics_port: int) -> dict[str, float]:
    """smtpguard_commands_total{verb="STARTTLS"} by verdict."""
    url = f"http://{LOOPBACK}:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    found = re.findall(
        r'^smtpguard_commands_total\{verb="STARTTLS",verdict="(\w+)"\} (\S+)$', text, re.M
    )
    return {verdict: float(n) for verdict, n in found}


def test_smtplib_starttls_and_no_second_starttls(tmp_path: Path, cert: tuple[str, str]) -> None:
    mport = free_port()
    metrics = ("--metrics-listen", f"{LOOPBACK}:{mport}")
    with sink_and_gateway(tmp_path, *terminate(cert), *metrics) as (sink, gw):
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=10) as s:
            s.ehlo()
            assert s.has_extn("starttls")
            s.starttls(context=_client_ctx())
            s.ehlo()
            assert not s.has_extn("starttls")
            assert s.docmd("STARTTLS")[0] == 503
            s.sendmail("a@example.org", ["b@example.net"], MSG)
        _wait(lambda: len(sink.messages()) == 1)
        assert len(sink.messages()) == 1
        # Counted when the session ends: the first STARTTLS answered 220 by the
        # gateway, the second (already in TLS) refused.
        _wait(lambda: _starttls_counted(mport).get("refused") == 1)
        assert _starttls_counted(mport) == {"accepted": 1.0, "refused": 1.0}


def test_terminate_secures_the_upstream_too(
    tmp_path: Path, cert: tuple[str, str], tls_server: tuple[int, Recorder]
) -> None:
    port, rec = tls_server
    gw = GatewayProcess(
        "--upstream",
        f"{LOOPBACK}:{port}",
        "--mode",
        "esmtp",
        "--starttls",
        "terminate",
        "--tls-cert",
        cert[0],
        "--tls-key",
        cert[1],
        workdir=tmp_path,
    )
    try:
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=10) as s:
            s.starttls(context=_client_ctx())
            s.sendmail("a@example.org", ["b@example.net"], MSG)
        _wait(lambda: len(rec.messages) == 1)
        assert len(rec.messages) == 1
        assert rec.messages[0][1] is True  # the gateway spoke TLS to the server
    finally:
        gw.stop()


def test_passthrough_tunnels_tls_end_to_end(
    tmp_path: Path, tls_server: tuple[int, Recorder]
) -> None:
    port, rec = tls_server
    gw = GatewayProcess(
        "--upstream",
        f"{LOOPBACK}:{port}",
        "--mode",
        "esmtp",
        "--starttls",
        "passthrough",
        workdir=tmp_path,
    )
    try:
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=10) as s:
            s.ehlo()
            assert s.has_extn("starttls")
            s.starttls(context=_client_ctx())
            # the certificate is the upstream's own: the gateway only relays bytes
            s.sendmail("a@example.org", ["b@example.net"], MSG)
        _wait(lambda: len(rec.messages) == 1)
        assert rec.messages[0][1] is True
    finally:
        gw.stop()


def test_certificate_without_its_key_is_a_clear_error(
    tmp_path: Path, cert: tuple[str, str]
) -> None:
    sink = SmtpSink(tmp_path)
    try:
        r = run_cli(
            "serve",
            "--listen",
            f"{LOOPBACK}:{free_port()}",
            "--upstream",
            sink.address,
            "--starttls",
            "terminate",
            "--tls-cert",
            cert[0],
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.startswith(
            f"smtpguard serve: error: --tls-cert {cert[0]}: no private key in it"
        )
        assert "--tls-key FILE" in r.stderr
    finally:
        sink.stop()


def test_terminate_without_certificate_is_a_clear_error(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    try:
        r = run_cli(
            "serve",
            "--listen",
            f"{LOOPBACK}:{free_port()}",
            "--upstream",
            sink.address,
            "--starttls",
            "terminate",
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "tls" in r.stderr.lower() and r.stderr.strip().count("\n") == 0
    finally:
        sink.stop()


def test_implicit_tls_listener(tmp_path: Path, cert: tuple[str, str]) -> None:
    tls_port = free_port()
    args = (
        "--mode",
        "esmtp",
        "--tls-cert",
        cert[0],
        "--tls-key",
        cert[1],
        "--tls-listen",
        f"{LOOPBACK}:{tls_port}",
    )
    with sink_and_gateway(tmp_path, *args) as (sink, gw):
        with smtplib.SMTP_SSL(LOOPBACK, tls_port, timeout=10, context=_client_ctx()) as s:
            s.ehlo()
            assert not s.has_extn("starttls")  # already encrypted
            s.sendmail("a@example.org", ["b@example.net"], MSG)
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=10) as s:  # the plain port still works
            s.sendmail("a@example.org", ["b@example.net"], MSG)
        _wait(lambda: len(sink.messages()) == 2)
        assert len(sink.messages()) == 2


def _peer_cert(port: int) -> bytes:
    with smtplib.SMTP(LOOPBACK, port, timeout=10) as s:
        s.starttls(context=_client_ctx())
        der = s.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert der is not None
        return der


def test_sighup_reloads_the_certificate(tmp_path: Path) -> None:
    import signal

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = self_signed_cert(tmp_path / "a")
    second = self_signed_cert(tmp_path / "b")
    sink = SmtpSink(tmp_path)
    cfg = tmp_path / "smtpguard.toml"

    def write(cert: tuple[str, str]) -> None:
        cfg.write_text(
            f'mode = "esmtp"\nstarttls = "terminate"\n[tls]\ncertfile = "{cert[0]}"\n'
            f'keyfile = "{cert[1]}"\n[gateway]\nupstream = "{sink.address}"\n'
        )

    write(first)
    gw = GatewayProcess("--config", str(cfg), workdir=tmp_path)
    try:
        before = _peer_cert(gw.port)
        write(second)
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        after = before
        while after == before and time.monotonic() < deadline:
            time.sleep(0.1)
            after = _peer_cert(gw.port)
        assert after != before  # new handshakes use the renewed certificate
        assert Path(second[0]).read_text().strip()  # (the file the gateway now serves)
    finally:
        gw.stop()
        sink.stop()
