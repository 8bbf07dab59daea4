"""The probe through the real gateway: STARTTLS (terminate) and implicit TLS, AUTH-ed.

The gateway in esmtp mode terminates TLS with a throw-away certificate and passes
AUTH to an upstream fake that requires it before MAIL, so every message session of
the probe only gets through if it really authenticated over TLS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import GatewayProcess, free_port, self_signed_cert, wait_port
from tests.probe.fakes import Behaviour, FakeSmtpServer
from tests.probe.harness import FAST, run_probe_cli

pytestmark = [pytest.mark.e2e, pytest.mark.standalone]

UPSTREAM_EHLO = b"250-fake.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN\r\n"
USER, PASSWORD = "probe", "s3cret"


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, int, FakeSmtpServer]]:
    cert, key = self_signed_cert(tmp_path)
    upstream = FakeSmtpServer(Behaviour(ehlo=UPSTREAM_EHLO, auth=(USER, PASSWORD)))
    with upstream as (host, port):
        implicit = free_port()
        gw = GatewayProcess(
            "--upstream",
            f"{host}:{port}",
            "--mode",
            "esmtp",
            "--starttls",
            "terminate",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-listen",
            f"127.0.0.1:{implicit}",
            workdir=tmp_path,
        )
        try:
            wait_port(implicit, gw.proc)
            yield gw, implicit, upstream
        finally:
            gw.stop()


def _probe(
    address: str, *tls: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    auth = ["--auth-user", USER, "--auth-pass", PASSWORD]
    code = run_probe_cli(["probe", address, *tls, "--json", "--timeout", "20", *FAST, *auth])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("how", ["starttls", "implicit"])
def test_authenticated_probe_through_the_gateway(
    how: str,
    tls_gateway: tuple[GatewayProcess, int, FakeSmtpServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw, implicit, upstream = tls_gateway
    if how == "starttls":
        code, report = _probe(gw.address, "--tls", capsys=capsys)
    else:
        code, report = _probe(f"127.0.0.1:{implicit}", "--implicit-tls", capsys=capsys)
    checks = {c["id"]: c for c in report["checks"]}
    assert checks["starttls"]["verdict"] == "ok", checks["starttls"]
    assert ("implicit TLS" in checks["starttls"]["detail"]) is (how == "implicit")
    assert checks["auth"]["verdict"] == "ok", checks["auth"]
    assert checks["control-message"]["verdict"] == "ok", checks["control-message"]
    assert checks["smuggling"]["verdict"] == "ok", checks["smuggling"]
    assert set(report["smuggling"].values()) == {"rejected"}
    # the dialogue, the control and split messages, the pipelined pair and every
    # variant: one AUTH each reached the upstream
    assert len(upstream.record.logins) == 16
    assert code == 0
