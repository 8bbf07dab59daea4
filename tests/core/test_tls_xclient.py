"""STARTTLS policies (strip, passthrough, terminate) and XCLIENT towards the server."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.core.events import ServerConnected
from smtpguard.core.phases import Phase
from smtpguard.core.policy import Mode, Policy, StartTls
from smtpguard.core.upstream import xclient_line, xtext
from tests.core.harness import FakeServer, Harness, converse


def esmtp(tls: StartTls = StartTls.STRIP, **kw: object) -> Policy:
    return dataclasses.replace(Policy.for_mode(Mode.ESMTP, hostname="gw"), starttls=tls, **kw)  # type: ignore[arg-type]


def ehlo_lines(out: bytes) -> list[bytes]:
    return [line for line in out.split(b"\r\n") if line.startswith(b"250")]


def test_strip_hides_and_refuses_starttls() -> None:
    run = converse(b"EHLO c\r\nSTARTTLS\r\nQUIT\r\n", policy=esmtp())
    assert not any(b"STARTTLS" in line for line in ehlo_lines(bytes(run.client_out)))
    assert b"500 5.5.1 Unrecognized command" in run.client_out
    assert b"STARTTLS" not in run.server.received


def test_passthrough_relays_and_stops_inspecting() -> None:
    h = Harness(esmtp(StartTls.PASSTHROUGH), server=FakeServer(tls_raw=True)).start()
    h.client(b"EHLO c\r\n")
    assert any(line.endswith(b"STARTTLS") for line in ehlo_lines(bytes(h.run.client_out)))
    h.client(b"STARTTLS\r\n")
    assert h.run.replies()[-1] == b"220 2.0.0 Ready to start TLS"
    hello = b"\x16\x03\x01\x00\x05hello\r\nDATA\n.\n"  # opaque: not inspected any more
    h.client(hello)
    assert h.run.server.received.endswith(b"STARTTLS\r\n" + hello)
    h.server_says(b"\x16\x03\x03server-bytes")
    assert h.run.client_out.endswith(b"\x16\x03\x03server-bytes")
    assert "SG-TLS-PASSTHROUGH" in h.run.event_ids()


def test_commands_pipelined_after_starttls_are_discarded() -> None:
    h = Harness(esmtp(StartTls.PASSTHROUGH), server=FakeServer(tls_raw=True)).start()
    h.client(b"EHLO c\r\n")
    h.client(b"STARTTLS\r\nMAIL FROM:<evil@x.org>\r\n")
    assert b"evil" not in h.run.server.received
    assert "SG-TLS-INJECTION" in h.run.event_ids()


def test_terminate_offers_starttls_and_hands_over_to_the_shell() -> None:
    h = Harness(esmtp(StartTls.TERMINATE)).start()
    # the fake server offers STARTTLS too: the gateway secures the upstream first
    h.client(b"EHLO c\r\n")
    assert h.run.tls == ["server"]
    assert h.run.server.received == b"EHLO c\r\nSTARTTLS\r\n"
    assert b"250" not in h.run.client_out  # the client waits for the post-TLS EHLO
    h.tls_started("server")
    assert h.run.server.received.endswith(b"STARTTLS\r\nEHLO c\r\n")
    lines = ehlo_lines(bytes(h.run.client_out))
    assert lines[-1] == b"250 STARTTLS"  # the gateway's own offer, once
    h.client(b"STARTTLS\r\nNOOP\r\n")
    assert h.run.replies()[-1] == b"220 2.0.0 Ready to start TLS"
    assert h.run.tls == ["server", "client"]
    h.client(b"RSET\r\n")  # still plaintext: the handshake has not completed
    h.tls_started("client")
    # the pipelined NOOP and the RSET were dropped, never executed
    assert "SG-TLS-INJECTION" in h.run.event_ids()
    assert h.run.events[-1].message == "12 octets pipelined after STARTTLS discarded"
    # RFC 3207 §4.2: the server's plaintext session is ended, a fresh one secured again
    assert len(h.run.servers) == 2 and h.run.servers[0].aborted
    h.client(b"EHLO c\r\n")
    assert h.run.tls == ["server", "client", "server"]
    h.tls_started("server")
    assert b"STARTTLS" not in ehlo_lines(bytes(h.run.client_out))[-1]
    h.client(b"STARTTLS\r\n")
    assert h.run.replies()[-1] == b"503 5.5.1 TLS already active"
    h.client(b"QUIT\r\n")
    assert h.run.replies()[-1] == b"221 2.0.0 Bye"


def test_xclient_tells_the_server_the_real_client() -> None:
    h = Harness(esmtp(xclient=True), peer=("192.0.2.7", 4242)).start()
    assert h.run.server.xclient == [b"XCLIENT ADDR=192.0.2.7 PORT=4242 NAME=[UNAVAILABLE]"]
    assert h.run.replies() == [b"220 gw ESMTP"]  # the client sees one greeting only
    h.client(b"EHLO c\r\nQUIT\r\n")
    assert h.run.server.received.endswith(b"EHLO c\r\nQUIT\r\n")


def test_xclient_ipv6_and_client_xclient_refused() -> None:
    h = Harness(esmtp(xclient=True), peer=("2001:db8::1", 25)).start()
    assert h.run.server.xclient[0].startswith(b"XCLIENT ADDR=IPV6:2001:db8::1 ")
    h.client(b"XCLIENT ADDR=10.0.0.1\r\n")
    assert h.run.replies()[-1] == b"500 5.5.1 Unrecognized command"


def test_xclient_values_are_xtext_encoded() -> None:
    # A peer address is not trusted to be clean: none of its bytes may end the line.
    h = Harness(esmtp(xclient=True), peer=("192.0.2.7\r\nRSET x", 25)).start()
    assert h.run.server.xclient == [
        b"XCLIENT ADDR=192.0.2.7+0D+0ARSET+20x PORT=25 NAME=[UNAVAILABLE]"
    ]


def test_xclient_drops_a_zone_from_the_address() -> None:
    h = Harness(esmtp(xclient=True), peer=("fe80::1%\teth0", 25)).start()
    assert h.run.server.xclient == [b"XCLIENT ADDR=IPV6:fe80::1 PORT=25 NAME=[UNAVAILABLE]"]


def test_xtext_rfc3461() -> None:
    assert xtext("!~:[]<>") == "!~:[]<>"
    assert xtext("a+b=c d\t\x7f\x00\u00e9") == "a+2Bb+3Dc+20d+09+7F+00+C3+A9"


def _xtext_decode(value: bytes) -> bytes:
    assert re.fullmatch(rb"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*", value), value
    return re.sub(rb"\+([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]), value)


@given(st.text(st.characters(exclude_categories=())), st.integers(0, 65535))
def test_xclient_line_is_one_printable_line_for_any_peer(host: str, port: int) -> None:
    line = xclient_line((host, port))
    assert line.endswith(b"\r\n") and all(0x20 <= b <= 0x7E for b in line[:-2])
    verb, addr, port_attr, name = line[:-2].split(b" ")
    assert verb == b"XCLIENT" and name == b"NAME=[UNAVAILABLE]"
    host = host.partition("%")[0]
    want = f"IPV6:{host}" if ":" in host else host
    assert _xtext_decode(addr.removeprefix(b"ADDR=")) == want.encode("utf-8", "surrogatepass")
    assert _xtext_decode(port_attr.removeprefix(b"PORT=")) == str(port).encode()


class Plain(FakeServer):
    """A server that does not offer XCLIENT (to the gateway, here: to anyone)."""

    def answer(self, line: bytes) -> bytes:
        if line.upper().startswith(b"EHLO"):
            return b"250-mx\r\n250 PIPELINING\r\n"
        return super().answer(line)


class Unauthorised(FakeServer):
    """Offers XCLIENT but refuses it, as Postfix does to a host outside
    smtpd_authorized_xclient_hosts."""

    def answer(self, line: bytes) -> bytes:
        if line.upper().startswith(b"XCLIENT"):
            self.xclient.append(line)
            return b"550 5.7.0 Error: insufficient authorization\r\n"
        return super().answer(line)


REFUSED_421 = b"421 4.7.0 Client address not accepted by the mail server, closing connection"


@pytest.mark.parametrize(
    ("server", "event"),
    [(Plain, "SG-XCLIENT-UNAVAILABLE"), (Unauthorised, "SG-XCLIENT-FAILED")],
    ids=["not-offered", "refused"],
)
def test_xclient_not_taken_refuses_the_client(server: type[FakeServer], event: str) -> None:
    # Carrying on would show the server every client as the gateway's own address,
    # which Postfix's default mynetworks trusts to relay.
    h = Harness(esmtp(xclient=True), server=server(), peer=("192.0.2.7", 1)).start()
    assert h.run.replies() == [b"220 gw ESMTP", REFUSED_421]
    assert h.run.client_closed and h.run.server.closed
    assert h.run.events[-1].id == event and h.run.events[-1].action == "drop-connection"
    h.client(b"HELO c\r\nMAIL FROM:<a@x.org>\r\n")
    assert b"HELO c" not in h.run.server.received and h.run.replies()[-1] == REFUSED_421


class OkXclient(FakeServer):
    """Older Postfix and smtp-sink answer XCLIENT with 250, not a fresh 220."""

    def answer(self, line: bytes) -> bytes:
        if line.upper().startswith(b"XCLIENT"):
            self.xclient.append(line)
            return b"250 2.0.0 Ok\r\n"
        return super().answer(line)


def test_xclient_answered_with_any_2xx_is_taken() -> None:
    h = Harness(esmtp(xclient=True), server=OkXclient(), peer=("192.0.2.7", 1)).start()
    h.client(b"HELO c\r\nMAIL FROM:<a@x.org>\r\n")
    assert h.run.replies() == [b"220 gw ESMTP", b"250 mx.example.test", b"250 2.1.0 Ok"]
    assert h.run.server.xclient and not h.run.client_closed


def test_xclient_not_taken_refuses_pipelined_input_too() -> None:
    h = Harness(esmtp(xclient=True), server=Unauthorised(), peer=("192.0.2.7", 1), auto=False)
    h.start().release()  # the greeting: the gateway sends EHLO, its reply is held
    h.client(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\n")
    h.release().release()  # EHLO reply, then XCLIENT refused
    assert h.run.replies() == [b"220 gw ESMTP", REFUSED_421]
    assert h.run.server.received.count(b"\r\n") == 2  # its EHLO and XCLIENT only


@pytest.mark.parametrize(
    ("server", "event"),
    [(Plain, "SG-XCLIENT-UNAVAILABLE"), (Unauthorised, "SG-XCLIENT-FAILED")],
    ids=["not-offered", "refused"],
)
def test_xclient_fail_open_carries_on_as_the_gateway(server: type[FakeServer], event: str) -> None:
    policy = esmtp(xclient=True, xclient_fail_open=True)
    h = Harness(policy, server=server(), peer=("192.0.2.7", 1)).start()
    h.client(b"HELO c\r\n")
    assert event in h.run.event_ids()
    assert "gateway's address" in h.run.events[-1].message
    assert h.run.replies()[-1] == b"250 mx.example.test"
    assert not h.run.client_closed


def test_xclient_refused_on_a_fresh_upstream_refuses_the_client() -> None:
    # A refused message drops the upstream; the next one must be told the client too.
    h = Harness(esmtp(xclient=True), peer=("192.0.2.7", 1)).start()
    h.client(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
    h.template = Unauthorised()
    h.client(b"bad\nline\r\n.\r\n")
    assert len(h.run.servers) == 2 and h.run.servers[1].xclient
    assert h.run.replies()[-1] == REFUSED_421 and h.run.client_closed


def _open_with(h: Harness, srv: FakeServer) -> None:
    h.run.servers.append(srv)
    h.live = True
    h.feed(ServerConnected())
    h._server_says(srv.greeting)


def test_fresh_upstream_after_a_refused_message_is_secured_again() -> None:
    h = Harness(esmtp(StartTls.TERMINATE)).start()
    h.client(b"EHLO c\r\n")
    h.tls_started("server")
    h.client(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
    h.client(b"bad\nline\r\n.\r\n")  # refused: the upstream is dropped, a new one opened
    assert len(h.run.servers) == 2
    second = h.run.servers[1]
    assert second.received == b"EHLO c\r\nSTARTTLS\r\n"  # replayed, then TLS first
    assert h.run.tls == ["server", "server"]
    h.tls_started("server")
    assert second.received.endswith(b"STARTTLS\r\nEHLO c\r\n")
    h.client(b"NOOP\r\n")
    assert h.run.replies()[-1] == b"250 2.0.0 Ok"


def test_a_tls_done_nobody_asked_for_changes_nothing() -> None:
    h = Harness(esmtp(StartTls.TERMINATE)).start()
    h.client(b"EHLO c\r\n")
    h.tls_started("server")
    before = bytes(h.run.client_out)
    h.tls_started("client")  # no STARTTLS was answered: a stray event
    h.tls_started("server")  # the upstream is already secured
    assert bytes(h.run.client_out) == before and h.session.phase is Phase.COMMAND
    h.client(b"NOOP\r\n")
    assert h.run.replies()[-1] == b"250 2.0.0 Ok"
