"""The real gateway process in front of a deliberately lenient (and a lying) server.

The lenient server ends message data at any lone dot between any two line breaks and
runs what follows as commands: the server a smuggling attack is written for. Sent to
it directly, every variant below smuggles a second transaction (the control shows the
test can fail); through the gateway, in ``reject`` and in ``normalize`` mode, none
does, and the server never stores more than the one message the client meant.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile import LenientServer
from tests.peers import LOOPBACK, GatewayProcess

VARIANTS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CR": b"\r.\r",
    "CR.LF": b"\r.\n",
    "LF.CR": b"\n.\r",
    "CRLF.CR": b"\r\n.\r",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CRCRLF": b"\r\n.\r\r\n",
    "CRCRLF.CRCRLF": b"\r\r\n.\r\r\n",
    "CRLF-NUL.CRLF": b"\r\n\x00.\r\n",
    "CRLF.NUL-CRLF": b"\r\n.\x00\r\n",
}
SMUGGLED = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nX\r\n"


def session(address: str, body: bytes) -> bytes:
    """One raw SMTP session: every command and the data in one write, then read all."""
    host, _, port = address.rpartition(":")
    script = (
        b"HELO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
        b"DATA\r\nSubject: t\r\n\r\nhello" + body + b"\r\n.\r\nQUIT\r\n"
    )
    out = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(script)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b"221" not in out:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
    return out


def wait_for(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def lenient() -> Iterator[LenientServer]:
    srv = LenientServer()
    yield srv
    srv.close()


@pytest.fixture(params=["reject", "normalize"])
def guarded(request, lenient: LenientServer, tmp_path: Path) -> Iterator[GatewayProcess]:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'smuggling = "{request.param}"\nhostname = "gw.example.test"\n')
    gw = GatewayProcess("--config", str(cfg), "--upstream", lenient.address, workdir=tmp_path)
    yield gw
    gw.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_lenient_server_alone_is_smuggled_into(lenient: LenientServer, variant: str) -> None:
    """Control: without the gateway the attack works on this server."""
    session(lenient.address, VARIANTS[variant] + SMUGGLED)
    wait_for(lambda: len(lenient.transactions) >= 2)
    assert b"MAIL FROM:<evil@attacker.test>" in lenient.mail_froms()


@pytest.mark.e2e
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_variant_smuggles_through_the_gateway(
    guarded: GatewayProcess, lenient: LenientServer, variant: str
) -> None:
    out = session(guarded.address, VARIANTS[variant] + SMUGGLED)
    assert b"221" in out, out
    wait_for(lambda: any(c.upper() == b"QUIT" for c in lenient.commands))
    assert b"MAIL FROM:<evil@attacker.test>" not in lenient.mail_froms()
    assert not any(c.startswith(b"MAIL FROM:<evil") for c in lenient.commands)
    assert len(lenient.transactions) <= 1
    # the client is told the truth: queued only if the server queued it
    queued = out.count(b"250 2.0.0 queued")
    assert queued == len(lenient.transactions)


def read_reply(f) -> bytes:  # type: ignore[no-untyped-def]
    lines = []
    while True:
        line = f.readline()
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines)


@pytest.mark.e2e
def test_a_reply_inside_the_data_is_never_passed_on_as_the_final_reply(tmp_path: Path) -> None:
    liar = LenientServer(early_reply=b"250 2.0.0 accepted early\r\n")
    gw = GatewayProcess("--upstream", liar.address, workdir=tmp_path)
    try:
        with socket.create_connection((LOOPBACK, gw.port), timeout=10) as s:
            f = s.makefile("rb")
            assert read_reply(f).startswith(b"220")
            for cmd in (b"HELO c", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>"):
                s.sendall(cmd + b"\r\n")
                assert read_reply(f).startswith(b"250")
            s.sendall(b"DATA\r\n")
            assert read_reply(f).startswith(b"354")
            s.sendall(b"Subject: t\r\n\r\nfirst part\r\n")
            wait_for(lambda: liar.connections == 2)  # desync seen: a fresh upstream
            s.sendall(b"second part\r\n.\r\n")
            final = read_reply(f)
            assert final.startswith(b"451 4.5.0 Mail server out of step"), final
            s.sendall(b"NOOP\r\nQUIT\r\n")
            assert read_reply(f) == b"250 2.0.0 ok\r\n"  # in order, from the fresh server
            assert read_reply(f).startswith(b"221")
        assert liar.transactions == []  # the aborted connection never completed a message
    finally:
        gw.stop()
        liar.close()
