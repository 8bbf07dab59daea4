"""XCLIENT towards a real Postfix: the server logs the real client, not the gateway."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess
from tests.postfix import PrivatePostfix

pytestmark = pytest.mark.e2e

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: xclient\r\n\r\nhi\r\n"


def _send_from(source: str, port: int) -> None:
    with smtplib.SMTP(LOOPBACK, port, timeout=15, source_address=(source, 0)) as s:
        s.sendmail("a@example.org", ["b@example.net"], MSG)


@pytest.mark.parametrize("xclient", [True, False], ids=["xclient", "no-xclient"])
def test_postfix_sees_the_real_client(tmp_path: Path, xclient: bool) -> None:
    with PrivatePostfix(smtpd_authorized_xclient_hosts=LOOPBACK) as pf:
        args = ["--upstream", pf.address, "--mode", "esmtp"]
        gw = GatewayProcess(*args, *(["--xclient"] if xclient else []), workdir=tmp_path)
        try:
            _send_from("127.0.0.2", gw.port)
        finally:
            gw.stop()
        text = pf.wait_log(lambda t: "client=" in t, 15)
        clients = [line for line in text.splitlines() if ": client=" in line]
        assert len(clients) == 1, text[-3000:]  # exactly one message
        if xclient:
            assert "[127.0.0.2]" in clients[0]
        else:
            assert "[127.0.0.1]" in clients[0]
