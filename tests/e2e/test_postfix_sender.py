"""A real Postfix as the sending MTA, relaying through the gateway (relayhost), as
a TLS client: STARTTLS terminate with smtp_tls_security_level = may. (The PIX
work-around check with Postfix as sender is in test_postfix.py.)"""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess, SmtpSink, free_port, self_signed_cert
from tests.probe.postfix_peer import private_postfix

pytestmark = pytest.mark.e2e

SMTP_CLIENT = "smtp      unix  - - n - - smtp\n"
TLSMGR = "tlsmgr    unix  - - n 1000? 1 tlsmgr\n"
MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: via postfix\r\n\r\nhello\r\n"


def _relay_through(
    tmp_path: Path, sink: SmtpSink, gw: GatewayProcess, master: str = "", **extra: str
) -> str:
    """Submit one message to a private Postfix whose relayhost is the gateway; wait
    until Postfix logs the delivery; return its log."""
    port = free_port()
    settings = {
        "relayhost": f"[{LOOPBACK}]:{gw.port}",
        "default_transport": "smtp",
        "smtp_host_lookup": "native",
        "smtp_dns_support_level": "disabled",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        **extra,
    }
    with private_postfix(port, master_extra=SMTP_CLIENT + master, **settings) as log:
        with smtplib.SMTP(LOOPBACK, port, timeout=15) as s:
            s.sendmail("a@example.org", ["b@example.net"], MSG)
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if "status=sent" in text or "status=deferred" in text or "status=bounced" in text:
                break
            time.sleep(0.1)
        return text


def test_postfix_tls_client_through_terminate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    sink = SmtpSink(tmp_path)
    gw = GatewayProcess(
        "--upstream",
        sink.address,
        "--mode",
        "esmtp",
        "--starttls",
        "terminate",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        workdir=tmp_path,
    )
    try:
        log = _relay_through(
            tmp_path, sink, gw, TLSMGR, smtp_tls_security_level="may", smtp_tls_loglevel="1"
        )
        assert "status=sent" in log, log[-3000:]
        assert "TLS connection established to" in log, log[-3000:]
    finally:
        gw.stop()
        sink.stop()
