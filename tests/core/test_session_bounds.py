"""Defects found by hostile peers in the session's life cycle (EOF, tunnels, memory)."""

from __future__ import annotations

import dataclasses
import gc

import pytest

from smtpguard.core.actions import DedupeLookup
from smtpguard.core.events import (
    ClientData,
    ClientEof,
    DedupeAnswer,
    ServerConnected,
    ServerData,
    Start,
)
from smtpguard.core.phases import Phase
from smtpguard.core.policy import Mode, Policy, StartTls
from smtpguard.core.session import Session
from tests.core.harness import FakeServer, Harness

WHOLE = (
    b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    b"Subject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n"
)


def test_whole_session_in_one_segment_then_half_close_is_delivered() -> None:
    """Every byte that arrived before EOF is processed as if EOF had not come."""
    for cuts in ((), range(1, len(WHOLE))):
        h = Harness(auto=False).start()
        h.client(WHOLE, cuts).client_eof()
        for _ in range(10):
            h.release()
        assert h.run.server.messages == [b"Subject: t\r\n\r\nhello\r\n"]
        assert not h.run.server.aborted
        assert h.run.replies()[-2:] == [b"250 2.0.0 Ok: queued as Q1", b"221 2.0.0 Bye"]
        assert h.run.client_closed


def test_eof_inside_the_message_still_aborts_it() -> None:
    h = Harness().start()
    h.client(WHOLE[: WHOLE.index(b"hello")]).client_eof()
    assert h.run.server.aborted and h.run.server.messages == []


def test_a_silent_passthrough_tunnel_times_out() -> None:
    policy = dataclasses.replace(
        Policy.for_mode(Mode.ESMTP, hostname="gw"), starttls=StartTls.PASSTHROUGH
    )
    h = Harness(policy, server=FakeServer(tls_raw=True)).start()
    h.client(b"EHLO c\r\nSTARTTLS\r\n")
    assert "SG-TLS-PASSTHROUGH" in h.run.event_ids()
    assert h.run.timer is not None  # a deadline is armed for the tunnel
    h.advance(policy.timeouts.client_idle / 2)
    h.client(b"\x17\x03\x03opaque")  # traffic keeps it open
    h.advance(policy.timeouts.client_idle * 0.75)
    assert not h.run.client_closed
    h.advance(policy.timeouts.client_idle)
    assert h.run.client_closed and h.run.server.closed
    assert "SG-TUNNEL-TIMEOUT" in h.run.event_ids()


@pytest.mark.no_recut  # 200,000 commands: re-running it at random cuts proves nothing more
def test_per_session_counters_are_bounded_by_configuration_not_input() -> None:
    h = Harness().start()
    h.client(b"HELO c\r\n")
    h.client(b"".join(b"XV%06d\r\n" % i for i in range(200_000)))
    session = h.session
    assert len(session.commands) <= len(session.policy.allowed_verbs) + 32
    assert sum(n for (_, what), n in session.commands.items() if what == "refused") == 200_000
    assert h.run.replies()[-1] == b"500 5.5.1 Unrecognized command"
    assert session.client_backlog == 0


def test_a_server_closing_a_passthrough_tunnel_gets_no_plaintext_reply() -> None:
    policy = dataclasses.replace(
        Policy.for_mode(Mode.ESMTP, hostname="gw"), starttls=StartTls.PASSTHROUGH
    )
    h = Harness(policy, server=FakeServer(tls_raw=True)).start()
    h.client(b"EHLO c\r\nSTARTTLS\r\n")
    h.client(b"\x16\x03\x01 client hello")
    before = bytes(h.run.client_out)
    h.server_drops()
    assert bytes(h.run.client_out) == before  # no 421 written into the TLS stream
    assert h.run.client_closed


CLIENT = (
    b"HELO c\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"RCPT TO:<b@example.net>\r\n",
    b"DATA\r\n",
    b"Subject: t\r\n\r\nhello\r\n.\r\n",
    b"QUIT\r\n",
)
SERVER = (
    b"250 mx\r\n",
    b"250 2.1.0 Ok\r\n",
    b"250 2.1.5 Ok\r\n",
    b"354 Go ahead\r\n",
    b"250 2.0.0 Ok: queued as Q1\r\n",
    b"221 2.0.0 Bye\r\n",
)


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        dataclasses.replace(
            Policy.for_mode(Mode.ESMTP, hostname="gw"), dedupe=True, shared_rates=True
        ),
    ],
    ids=["mailguard", "esmtp-dedupe-shared-rates"],
)
def test_a_closed_session_leaves_no_cyclic_garbage(policy: Policy) -> None:
    """The parts point back at their session until it closes; then they let go, so
    a gateway's closed sessions are freed at once, not by the cycle collector."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            s = Session(policy, peer=("127.0.0.1", 40000))
            s.handle(Start(), 1.0)
            s.handle(ServerConnected(), 1.0)
            s.handle(ServerData(b"220 mx ESMTP\r\n"), 1.0)
            for line, reply in zip(CLIENT, SERVER, strict=True):
                actions = s.handle(ClientData(line), 1.0)
                if any(isinstance(a, DedupeLookup) for a in actions):
                    s.handle(DedupeAnswer(None), 1.0)  # the store knows no such message
                s.handle(ServerData(reply), 1.0)
            s.handle(ClientEof(), 1.0)
            assert s.phase is Phase.CLOSED and s.messages_relayed == 1
        del s
        assert gc.collect() == 0
    finally:
        gc.enable()
