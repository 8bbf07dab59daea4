"""smtpguard next to a real Postfix, both ways round (tests/postfix.py).

Upstream: clients send through ``smtpguard serve --upstream <postfix>``; each message
must land in Postfix's mailbox exactly once (one queue ID, one ``status=sent``, one
copy in the mbox), including when the end of data arrives split across segments —
the Mailguard bug that made senders re-send for hours.

Sender: Postfix relays to the gateway (``relayhost``), the gateway to smtp-sink. With
``--banner pix`` Postfix recognises the PIX mask and logs "enabling PIX
workarounds"; with the default ``generic`` banner it does not. Delivered either way.
"""

from __future__ import annotations

import smtplib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess, SmtpSink, swaks
from tests.postfix import MAILBOX_DOMAIN, PrivatePostfix, message

pytestmark = pytest.mark.e2e

RCPT = f"b@{MAILBOX_DOMAIN}"


@pytest.fixture(scope="module")
def upstream() -> Iterator[PrivatePostfix]:
    """One Postfix for the module's upstream tests; each test has its own Message-ID."""
    with PrivatePostfix("smtpguard-upstream") as pf:
        yield pf


def _new_id() -> str:
    return f"{uuid.uuid4().hex}@smtpguard.test"


def _copies(pf: PrivatePostfix, message_id: str) -> int:
    needle = f"Message-ID: <{message_id}>".encode()
    return sum(needle in m for m in pf.mailbox_messages())


def _assert_landed_once(pf: PrivatePostfix, message_id: str) -> None:
    outcomes = pf.wait_delivered(message_id)
    log_tail = pf.log()[-3000:]
    assert len(pf.queue_ids(message_id)) == 1, log_tail
    assert len(outcomes) == 1 and "status=sent" in outcomes[0], log_tail
    assert "delivered to mailbox" in outcomes[0]
    assert _copies(pf, message_id) == 1


@pytest.mark.parametrize("mode", ["mailguard", "esmtp"])
def test_smtplib_through_the_gateway_lands_once(
    upstream: PrivatePostfix, tmp_path: Path, mode: str
) -> None:
    gw = GatewayProcess("--upstream", upstream.address, "--mode", mode, workdir=tmp_path)
    mid = _new_id()
    try:
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=15) as s:
            refused = s.sendmail("a@example.org", [RCPT], message(mid, f"via {mode}"))
        assert refused == {}
    finally:
        gw.stop()
    _assert_landed_once(upstream, mid)


def test_swaks_through_the_gateway_lands_once(upstream: PrivatePostfix, tmp_path: Path) -> None:
    gw = GatewayProcess("--upstream", upstream.address, "--mode", "esmtp", workdir=tmp_path)
    mid = _new_id()
    try:
        swaks(gw.address, "--header", f"Message-ID: <{mid}>", "--body", "sent with swaks", to=RCPT)
    finally:
        gw.stop()
    _assert_landed_once(upstream, mid)


def _reply(sock: socket.socket, buf: bytearray) -> bytes:
    """Read one complete (possibly multi-line) reply."""
    while True:
        lines = bytes(buf).split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":
                end = sum(len(x) + 2 for x in lines[: i + 1])
                reply = bytes(buf[:end])
                del buf[:end]
                return reply
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed; pending {bytes(buf)!r}")
        buf += chunk


def test_split_end_of_data_still_lands_once(upstream: PrivatePostfix, tmp_path: Path) -> None:
    """CRLF . CRLF in three segments (the PIX Mailguard bug): one 250, one copy."""
    gw = GatewayProcess("--upstream", upstream.address, workdir=tmp_path)
    mid = _new_id()
    try:
        with socket.create_connection((LOOPBACK, gw.port), timeout=15) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray()
            assert _reply(s, buf).startswith(b"220")
            for cmd, code in (
                (b"HELO client.example.org", b"250"),
                (b"MAIL FROM:<a@example.org>", b"250"),
                (f"RCPT TO:<{RCPT}>".encode(), b"250"),
                (b"DATA", b"354"),
            ):
                s.sendall(cmd + b"\r\n")
                assert _reply(s, buf).startswith(code), cmd
            s.sendall(message(mid, "split end of data").removesuffix(b"\r\n"))
            for segment in (b"\r\n", b".", b"\r\n"):
                time.sleep(0.2)  # separate segments; no timing is asserted
                s.sendall(segment)
            final = _reply(s, buf)
            assert final.startswith(b"250"), final
            s.sendall(b"QUIT\r\n")
            assert _reply(s, buf).startswith(b"221")
    finally:
        gw.stop()
    _assert_landed_once(upstream, mid)


# -- Postfix as the sending MTA ---------------------------------------------------


@pytest.mark.parametrize(("banner", "pix"), [("pix", True), ("generic", False)])
def test_postfix_sender_pix_workarounds_only_with_pix_banner(
    tmp_path: Path, banner: str, pix: bool
) -> None:
    sink = SmtpSink(tmp_path)
    gw = GatewayProcess("--upstream", sink.address, "--banner", banner, workdir=tmp_path)
    mid = _new_id()
    try:
        with PrivatePostfix(
            "smtpguard-sender",
            relayhost=f"[{LOOPBACK}]:{gw.port}",
            default_transport="smtp",
            virtual_mailbox_domains="",  # everything goes out through the relayhost
        ) as pf:
            pf.sendmail("a@example.org", [RCPT], message(mid, f"banner {banner}"))
            outcomes = pf.wait_delivered(mid)
            log = pf.log()
        assert len(outcomes) == 1 and "status=sent" in outcomes[0], log[-3000:]
        assert f"relay=127.0.0.1[127.0.0.1]:{gw.port}" in outcomes[0]
        assert ("enabling PIX workarounds" in log) is pix, log[-3000:]
        copies = [m for m in sink.messages() if f"<{mid}>".encode() in m]
        assert len(copies) == 1  # delivered once, workarounds or not
    finally:
        gw.stop()
        sink.stop()
