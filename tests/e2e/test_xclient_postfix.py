"""XCLIENT towards a real Postfix: the server logs the real client, not the gateway."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess, free_port
from tests.probe.postfix_peer import private_postfix

pytestmark = pytest.mark.e2e

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: xclient\r\n\r\nhi\r\n"


def _send_from(source: str, port: int) -> None:
    with smtplib.SMTP(LOOPBACK, port, timeout=15, source_address=(source, 0)) as s:
        s.sendmail("a@example.org", ["b@example.net"], MSG)


def _wait_log(log: Path, needle: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if needle in text:
            return text
        time.sleep(0.1)
    return text


@pytest.mark.parametrize("xclient", [True, False], ids=["xclient", "no-xclient"])
def test_postfix_sees_the_real_client(tmp_path: Path, xclient: bool) -> None:
    port = free_port()
    with private_postfix(port, smtpd_authorized_xclient_hosts="127.0.0.1") as log:
        args = ["--upstream", f"{LOOPBACK}:{port}", "--mode", "esmtp"]
        gw = GatewayProcess(*args, *(["--xclient"] if xclient else []), workdir=tmp_path)
        try:
            _send_from("127.0.0.2", gw.port)
        finally:
            gw.stop()
        text = _wait_log(log, "client=")
        clients = [line for line in text.splitlines() if ": client=" in line]
        assert len(clients) == 1, text[-3000:]  # exactly one message
        if xclient:
            assert "[127.0.0.2]" in clients[0]
        else:
            assert "[127.0.0.1]" in clients[0]
