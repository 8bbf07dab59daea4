"""A real Postfix as the sending MTA, relaying through the gateway (relayhost), as
a TLS client: STARTTLS terminate with smtp_tls_security_level = may. (The PIX
work-around check with Postfix as sender is in test_postfix.py.)"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess, self_signed_cert, sink_and_gateway
from tests.postfix import PrivatePostfix

pytestmark = pytest.mark.e2e

MSG = b"From: a@example.org\r\nTo: b@relay.example\r\nSubject: via postfix\r\n\r\nhello\r\n"


def _relay_through(gw: GatewayProcess, **extra: str) -> str:
    """Submit one message to a private Postfix whose relayhost is the gateway; wait
    until Postfix logs its delivery; return the log."""
    settings = {"relayhost": f"[{LOOPBACK}]:{gw.port}", "default_transport": "smtp", **extra}
    with PrivatePostfix("smtpguard-sender", **settings) as pf:
        with smtplib.SMTP(LOOPBACK, pf.port, timeout=15) as s:
            s.sendmail("a@example.org", ["b@relay.example"], MSG)
        return pf.wait_log(lambda t: re.search(r"status=(sent|deferred|bounced)", t) is not None)


def test_postfix_tls_client_through_terminate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    args = ("--mode", "esmtp", "--starttls", "terminate", "--tls-cert", cert, "--tls-key", key)
    with sink_and_gateway(tmp_path, *args) as (_, gw):
        log = _relay_through(gw, smtp_tls_security_level="may", smtp_tls_loglevel="1")
        assert "status=sent" in log, log[-3000:]
        assert "TLS connection established to" in log, log[-3000:]
