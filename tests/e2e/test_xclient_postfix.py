"""XCLIENT towards a real Postfix: the server logs the real client, not the gateway;
and when Postfix will not take XCLIENT from the gateway, the client is refused with
421 4.7.0 instead of being relayed as the gateway's own address."""

from __future__ import annotations

import contextlib
import smtplib
import socket
from pathlib import Path
from typing import Any

import pytest

from smtpguard.gateway.cli import XCLIENT_FAIL_OPEN_WARNING
from tests.core.test_tls_xclient import REFUSED_421
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


# -- a Postfix that does not authorise the gateway for XCLIENT ------------------------------
#
# Postfix offers XCLIENT in its EHLO reply only to smtpd_authorized_xclient_hosts (empty
# by default), so an unauthorised gateway sees it not offered. mynetworks holds the
# gateway's address (127.0.0.1) and not the client's (127.0.0.2), as a default
# mynetworks holds a gateway on the Postfix host and not the internet behind it.

FOREIGN = "victim@elsewhere.test"  # not a domain this Postfix is the destination for
UNAUTHORISED = {"mynetworks": f"{LOOPBACK}/32", "smtpd_authorized_xclient_hosts": ""}


def _raw_session(port: int, commands: bytes) -> bytes:
    """Connect from 127.0.0.2, read the greeting and whatever follows, send
    ``commands``, and read until the gateway closes (bounded)."""
    with socket.create_connection((LOOPBACK, port), 15, ("127.0.0.2", 0)) as s:
        got = b""
        while got.count(b"\r\n") < 2:  # the greeting, then the gateway's verdict
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        with contextlib.suppress(OSError):  # the gateway may have closed already
            s.sendall(commands)
            while chunk := s.recv(4096):
                got += chunk
        return got


def test_unauthorised_xclient_refuses_the_client_with_421(tmp_path: Path) -> None:
    with PrivatePostfix(**UNAUTHORISED) as pf:
        gw = GatewayProcess(
            "--upstream", pf.address, "--mode", "esmtp", "--xclient", workdir=tmp_path
        )
        try:
            got = _raw_session(
                gw.port,
                b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<"
                + FOREIGN.encode()
                + b">\r\nQUIT\r\n",
            )
        finally:
            gw.stop()
        lines = got.split(b"\r\n")
        assert lines[0].startswith(b"220 ") and lines[1] == REFUSED_421, got
        assert b"250" not in got, got
        # Postfix's summary of the gateway's connection: its EHLO, nothing after it
        # (the port probes before it show commands=0/0).
        text = pf.wait_log(lambda t: " ehlo=" in t, 15)
        sessions = [
            line for line in text.splitlines() if "disconnect from" in line and "ehlo=" in line
        ]
        assert len(sessions) == 1 and sessions[0].endswith(" ehlo=1 commands=1"), text
        assert ": client=" not in text and "rcpt=" not in text, text


def test_unauthorised_xclient_with_fail_open_relays_as_the_gateway(tmp_path: Path) -> None:
    """What xclient_fail_open = true means, shown: the client is relayed as the
    gateway's address, and serve said so when it started."""
    with PrivatePostfix(**UNAUTHORISED) as pf:
        gw = GatewayProcess(
            "--upstream",
            pf.address,
            "--mode",
            "esmtp",
            "--xclient",
            "--xclient-fail-open",
            workdir=tmp_path,
        )
        try:
            with smtplib.SMTP(LOOPBACK, gw.port, timeout=15, source_address=("127.0.0.2", 0)) as s:
                refused = s.sendmail("a@example.org", [FOREIGN], MSG)
        finally:
            _code, out = gw.stop()
        assert refused == {}
        assert XCLIENT_FAIL_OPEN_WARNING[0] in out and "mynetworks" in out, out
        text = pf.wait_log(lambda t: f"to=<{FOREIGN}>" in t, 15)
        clients = [line for line in text.splitlines() if ": client=" in line]
        assert len(clients) == 1 and f"[{LOOPBACK}]" in clients[0], text[-3000:]


def test_authorised_xclient_is_not_relayed_for_a_client_outside_mynetworks(
    tmp_path: Path,
) -> None:
    """The control: with XCLIENT authorised the same client is seen as itself and
    the same relay attempt is refused by Postfix."""
    settings = {**UNAUTHORISED, "smtpd_authorized_xclient_hosts": LOOPBACK}
    with PrivatePostfix(**settings) as pf:
        gw = GatewayProcess(
            "--upstream", pf.address, "--mode", "esmtp", "--xclient", workdir=tmp_path
        )
        try:
            with (
                smtplib.SMTP(LOOPBACK, gw.port, timeout=15, source_address=("127.0.0.2", 0)) as s,
                pytest.raises(smtplib.SMTPRecipientsRefused) as exc,
            ):
                s.sendmail("a@example.org", [FOREIGN], MSG)
        finally:
            gw.stop()
        code, _msg = exc.value.recipients[FOREIGN]
        assert code == 554  # Relay access denied


# -- a client behind a trusted load balancer: PROXY v1 in, XCLIENT out ------------------------


def _reply(f: Any) -> bytes:
    """One whole reply (its last line) from a socket file."""
    while (line := f.readline()) and line[3:4] == b"-":
        pass
    return line.rstrip(b"\r\n")


def _proxied_message(port: int, header: bytes) -> list[bytes]:
    """Send ``header`` then a message, one command at a time; every reply's last line
    (ending at the first refusal or close)."""
    steps = [b"EHLO c", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>", b"DATA"]
    with socket.create_connection((LOOPBACK, port), 15) as s, s.makefile("rb") as f:
        s.sendall(header)
        replies = [_reply(f)]
        for step in [*steps, MSG + b".", b"QUIT"]:
            if replies[-1][:1] not in (b"2", b"3"):
                break
            with contextlib.suppress(OSError):
                s.sendall(step + b"\r\n")
            replies.append(_reply(f))
        return replies


PROXIED = b"PROXY TCP6 2001:db8::7 2001:db8::25 40000 25\r\n"


def _through_gateway(pf: PrivatePostfix, tmp_path: Path, header: bytes) -> list[bytes]:
    """``_proxied_message`` through a gateway (esmtp, XCLIENT, PROXY from loopback)
    in front of ``pf``."""
    args = ("--upstream", pf.address, "--mode", "esmtp", "--xclient")
    gw = GatewayProcess(*args, "--proxy-from", f"{LOOPBACK}/32", workdir=tmp_path)
    try:
        return _proxied_message(gw.port, header)
    finally:
        gw.stop()


def test_a_proxied_ipv6_client_is_the_client_postfix_sees(tmp_path: Path) -> None:
    settings = {"smtpd_authorized_xclient_hosts": LOOPBACK, "inet_protocols": "all"}
    with PrivatePostfix(**settings) as pf:
        replies = _through_gateway(pf, tmp_path, PROXIED)
        assert [r[:3] for r in replies] == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
        text = pf.wait_log(lambda t: ": client=" in t, 15)
        assert "client=unknown[2001:db8::7]" in text, text[-3000:]


def test_a_proxied_ipv6_client_to_an_ipv4_only_postfix_gets_421(tmp_path: Path) -> None:
    """Postfix refuses an IPv6 ADDR unless inet_protocols includes ipv6 (501 5.5.4
    Bad ADDR syntax): the client is refused, not relayed as the gateway."""
    with PrivatePostfix(smtpd_authorized_xclient_hosts=LOOPBACK) as pf:  # ipv4 only
        replies = _through_gateway(pf, tmp_path, PROXIED)
        assert replies[0][:3] == b"220" and replies[1] == REFUSED_421, replies
        text = pf.wait_log(lambda t: " xclient=0/1 " in t, 15)  # its 501 to the gateway
        assert ": client=" not in text and "rcpt=" not in text, text


def test_a_proxy_header_with_a_zone_never_reaches_postfix(tmp_path: Path) -> None:
    with PrivatePostfix(smtpd_authorized_xclient_hosts=LOOPBACK, inet_protocols="all") as pf:
        args = ("--upstream", pf.address, "--mode", "esmtp", "--xclient")
        proxy = ("--proxy-from", f"{LOOPBACK}/32", "--log-level", "info")
        gw = GatewayProcess(*args, *proxy, workdir=tmp_path)
        try:
            header = b"PROXY TCP6 fe80::7%\tRSET 2001:db8::25 40000 25\r\n"
            replies = _proxied_message(gw.port, header)
        finally:
            _code, out = gw.stop()
        assert replies == [b""], replies  # closed without a word
        assert "SG-PROXY-INVALID" in out, out
        assert "ehlo=" not in pf.log()  # no session reached it
