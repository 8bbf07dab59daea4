"""deploy/smtpguard.toml is what the README recommends for production: run for real
(on loopback, with a throw-away certificate), ``smtpguard probe`` finds no
Mailguard-style filter and STARTTLS works, while the built-in default (mailguard
mode) is reported as one."""

from __future__ import annotations

import json
import smtplib
import ssl
from pathlib import Path

import pytest

from tests.peers import (
    LOOPBACK,
    GatewayProcess,
    SmtpSink,
    free_port,
    run_cli,
    self_signed_cert,
)

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).parents[2] / "deploy" / "smtpguard.toml"


def _probe(port: int) -> dict[str, object]:
    r = run_cli("probe", f"{LOOPBACK}:{port}", "--no-send", "--json")
    assert r.stdout, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def test_production_config_passes_the_probe_and_speaks_tls(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    sink = SmtpSink(tmp_path)
    gw = GatewayProcess(
        "--config",
        str(DEPLOY),
        "--upstream",
        sink.address,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--metrics-listen",
        f"{LOOPBACK}:{free_port()}",
        "--protocol-log",
        str(tmp_path / "protocol.log"),
        "--pid-file",
        str(tmp_path / "smtpguard.pid"),
        workdir=tmp_path,
    )
    try:
        report = _probe(gw.port)
        ctx = ssl.create_default_context(cafile=cert)
        ctx.check_hostname = False
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=15) as s:
            s.ehlo("client.example")
            assert s.has_extn("starttls")
            s.starttls(context=ctx)
            s.ehlo("client.example")
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: tls\r\n\r\nhi\r\n")
    finally:
        _, out = gw.stop()
        sink.stop()
    assert report["filter_detected"] is False and report["verdict"] == "ok", report["summary"]
    assert "PROBLEM" not in json.dumps(report)
    # log_format = "json": every line the process wrote, the start-up block included.
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    [started] = [o for o in lines if o.get("event") == "SG-GATEWAY-STARTED"]
    assert "esmtp mode" in started["message"] and started["starttls"] == "terminate"
    assert [o.get("event") for o in lines[-2:]] == ["SG-GATEWAY-DRAINING", "SG-GATEWAY-STOPPED"]


def test_the_default_mailguard_mode_is_what_the_probe_flags(tmp_path: Path) -> None:
    gw = GatewayProcess(workdir=tmp_path)  # built-in mailbox, mailguard mode
    try:
        report = _probe(gw.port)
    finally:
        gw.stop()
    assert report["filter_detected"] is True
    assert "Mailguard-style filter" in json.dumps(report)
