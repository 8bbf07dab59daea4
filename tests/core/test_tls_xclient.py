"""STARTTLS policies (strip, passthrough, terminate) and XCLIENT towards the server."""

from __future__ import annotations

import dataclasses

from smtpguard.core.events import ServerConnected
from smtpguard.core.phases import Phase
from smtpguard.core.policy import Mode, Policy, StartTls
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


def test_xclient_unavailable_is_logged() -> None:
    class Plain(FakeServer):
        def answer(self, line: bytes) -> bytes:
            if line.upper().startswith(b"EHLO"):
                return b"250-mx\r\n250 PIPELINING\r\n"
            return super().answer(line)

    h = Harness(esmtp(xclient=True), peer=("192.0.2.7", 1))
    h._open = lambda: _open_with(h, Plain())  # type: ignore[method-assign]
    h.start().client(b"HELO c\r\n")
    assert "SG-XCLIENT-UNAVAILABLE" in h.run.event_ids()
    assert h.run.replies()[-1] == b"250 mx.example.test"


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
