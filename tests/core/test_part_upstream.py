"""The upstream link alone, without a session: fed the server's bytes, it frames
replies (whole input, one byte at a time, trailing data kept for the next feed);
fed the greeting and the replies to its own commands, it runs the handshake as its
own object, writes its commands into the action list and returns what the session
must do (``After``, or ``Secured`` with the client's EHLO reply)."""

from __future__ import annotations

import dataclasses

import pytest

from smtpguard.core.actions import Action, CloseServer, OpenServer, StartTls, ToClient, ToServer
from smtpguard.core.deadlines import Deadlines
from smtpguard.core.events import Side
from smtpguard.core.grammar import Reply
from smtpguard.core.output import Output
from smtpguard.core.phases import Upstream
from smtpguard.core.pipeline import Slot
from smtpguard.core.policy import Policy
from smtpguard.core.policy import StartTls as StartTlsPolicy
from smtpguard.core.upstream import After, Secured, UpstreamLink

POLICY = Policy(hostname="gw.example.test")
PEER = ("192.0.2.7", 40000)
EHLO_REPLY = b"250-mx.example.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def make(policy: Policy = POLICY) -> tuple[UpstreamLink, Output, Deadlines]:
    out, deadlines = Output(False), Deadlines()
    link = UpstreamLink(policy, out, deadlines, PEER)
    link.connected(0.0)
    return link, out, deadlines


def cuts(data: bytes) -> list[list[bytes]]:
    return [[data], [data[i : i + 1] for i in range(len(data))]]


def replies_from(link: UpstreamLink, chunks: list[bytes]) -> list[Reply | str]:
    got: list[Reply | str] = []
    for chunk in chunks:
        link.feed(chunk)
        while (r := link.next_reply()) is not None:
            got.append(r)
    return got


def reply(raw: bytes) -> Reply:
    link, _, _ = make()
    (r,) = replies_from(link, [raw])
    assert isinstance(r, Reply)
    return r


def sent(actions: list[Action]) -> list[bytes]:
    return [bytes(a.data) for a in actions if isinstance(a, ToServer)]


@pytest.mark.parametrize("chunks", cuts(EHLO_REPLY + b"220 ok\r\n"))
def test_replies_are_framed_whatever_the_segmentation(chunks: list[bytes]) -> None:
    link, _, _ = make()
    got = replies_from(link, chunks)
    assert [r.code for r in got if isinstance(r, Reply)] == [250, 220]
    first = got[0]
    assert isinstance(first, Reply) and first.raw == EHLO_REPLY


@pytest.mark.parametrize("chunks", cuts(b"250 ok\r\n250-par"))
def test_trailing_data_waits_for_the_rest_of_its_reply(chunks: list[bytes]) -> None:
    link, _, _ = make()
    assert len(replies_from(link, chunks)) == 1
    got = replies_from(link, [b"tial\r\n250 end\r\n"])
    assert len(got) == 1 and isinstance(got[0], Reply) and got[0].raw.startswith(b"250-par")


@pytest.mark.parametrize("chunks", cuts(b"hello there\r\n"))
def test_bytes_that_are_not_a_reply_are_a_reason_to_fail(chunks: list[bytes]) -> None:
    link, out, _ = make()
    got = replies_from(link, chunks)
    assert len(got) == 1 and isinstance(got[0], str)
    assert link.failed(got[0]) is After.LOST
    assert any(isinstance(a, CloseServer) for a in out.actions)


def test_an_endless_line_fails_the_link() -> None:
    link, _, _ = make()
    got = replies_from(link, [b"250-" + b"x" * 600] + [b"x" * 600] * 20)
    assert any(isinstance(r, str) for r in got)


def test_a_plain_greeting_is_relayed_and_the_link_is_ready() -> None:
    link, out, deadlines = make()
    assert link.on_greeting(reply(b"220 mx ESMTP\r\n"), None, None, 1.0) is After.NOTHING
    assert link.state is Upstream.READY and link.handshake is None and link.greeted
    assert any(isinstance(a, ToClient) for a in out.actions) and deadlines.server is None


def test_a_421_greeting_is_relayed_and_the_session_closes() -> None:
    link, _, _ = make()
    assert link.on_greeting(reply(b"421 busy\r\n"), None, None, 1.0) is After.CLOSE


def test_a_fresh_connection_replays_the_hello_through_its_handshake() -> None:
    link, out, _ = make()
    link.on_greeting(reply(b"220 mx\r\n"), None, None, 0.0)
    link.reconnect(1.0)
    assert isinstance(out.actions[-1], OpenServer)
    link.connected(1.0)
    del out.actions[:]
    helo = b"HELO client.example\r\n"
    assert link.on_greeting(reply(b"220 mx\r\n"), helo, None, 1.0) is After.NOTHING
    assert sent(out.actions) == [helo] and link.state is Upstream.HANDSHAKE
    assert link.on_step_reply(reply(b"250 hi\r\n"), 1.0) is After.NOTHING
    assert link.state is Upstream.READY and link.handshake is None


def test_a_refused_greeting_on_reconnect_is_unavailable() -> None:
    link, _, _ = make()
    link.on_greeting(reply(b"220 mx\r\n"), None, None, 0.0)
    link.reconnect(1.0)
    link.connected(1.0)
    assert link.on_greeting(reply(b"554 no\r\n"), None, None, 1.0) is After.UNAVAILABLE
    assert link.state is Upstream.DOWN


def test_xclient_then_ready() -> None:
    link, out, _ = make(dataclasses.replace(POLICY, xclient=True))
    link.on_greeting(reply(b"220 mx\r\n"), None, None, 0.0)
    assert sent(out.actions) == [b"EHLO gw.example.test\r\n"]
    ehlo = reply(b"250-mx\r\n250 XCLIENT ADDR PORT NAME\r\n")
    assert link.on_step_reply(ehlo, 0.0) is After.NOTHING
    assert sent(out.actions)[-1].startswith(b"XCLIENT ADDR=192.0.2.7 PORT=40000")
    assert link.on_step_reply(reply(b"220 mx again\r\n"), 0.0) is After.NOTHING
    assert link.state is Upstream.READY and link.handshake is None


def test_xclient_not_offered_refuses_the_client() -> None:
    link, out, deadlines = make(dataclasses.replace(POLICY, xclient=True))
    link.on_greeting(reply(b"220 mx\r\n"), None, None, 0.0)
    assert link.on_step_reply(reply(b"250 mx\r\n"), 0.0) is After.REFUSE
    assert link.state is Upstream.DOWN and deadlines.server is None
    assert isinstance(out.actions[-1], CloseServer)


def test_terminate_secures_the_upstream_before_the_client_sees_its_ehlo_reply() -> None:
    link, out, _ = make(dataclasses.replace(POLICY, starttls=StartTlsPolicy.TERMINATE))
    link.on_greeting(reply(b"220 mx\r\n"), None, None, 0.0)
    slot = Slot("EHLO", b"EHLO client.example\r\n")
    offer = reply(b"250-mx\r\n250 STARTTLS\r\n")
    assert link.secure_first(offer, slot, slot.raw, 0.0)
    assert sent(out.actions)[-1] == b"STARTTLS\r\n" and link.state is Upstream.HANDSHAKE
    assert link.on_step_reply(reply(b"220 go\r\n"), 0.0) is After.NOTHING
    assert isinstance(out.actions[-1], StartTls) and out.actions[-1].side is Side.SERVER
    link.tls_started(0.0)
    assert link.tls and sent(out.actions)[-1] == slot.raw
    after_tls = reply(b"250-mx\r\n250 AUTH PLAIN\r\n")
    decision = link.on_step_reply(after_tls, 0.0)
    assert isinstance(decision, Secured)
    assert decision.slot is slot and decision.reply is after_tls
    assert link.state is Upstream.READY and link.handshake is None
    assert not link.secure_first(offer, slot, slot.raw, 0.0)  # secured once is enough


def test_a_refused_starttls_answers_with_the_clear_ehlo_reply() -> None:
    link, _, _ = make(dataclasses.replace(POLICY, starttls=StartTlsPolicy.TERMINATE))
    link.on_greeting(reply(b"220 mx\r\n"), None, None, 0.0)
    slot = Slot("EHLO", b"EHLO client.example\r\n")
    offer = reply(b"250-mx\r\n250 STARTTLS\r\n")
    assert link.secure_first(offer, slot, slot.raw, 0.0)
    decision = link.on_step_reply(reply(b"454 no TLS\r\n"), 0.0)
    assert isinstance(decision, Secured) and decision.reply is offer


def test_a_stray_tls_done_does_nothing() -> None:
    link, out, _ = make()
    link.on_greeting(reply(b"220 mx\r\n"), None, None, 0.0)
    before = list(out.actions)
    link.tls_started(0.0)
    assert out.actions == before and not link.tls


def ready() -> tuple[UpstreamLink, Output]:
    link, out, _ = make()
    assert link.on_greeting(reply(b"220 mx\r\n"), None, None, 1.0) is After.NOTHING
    assert link.state is Upstream.READY  # no HELO yet: nothing to replay
    del out.actions[:]
    return link, out


@pytest.mark.parametrize("said_421", [False, True])
def test_a_parked_link_is_not_live_and_reopens_on_reconnect(said_421: bool) -> None:
    link, out = ready()
    link.park(said_421)
    assert link.state is Upstream.PARKED and not link.live
    # its own close only when the server's transport is still open (after its 421)
    assert out.actions == ([CloseServer(abort=False)] if said_421 else [])
    del out.actions[:]
    link.reconnect(2.0)
    assert out.actions == [OpenServer()]  # no close of a connection already gone
    assert link.state is Upstream.CONNECTING


def test_renew_opens_a_fresh_connection_unless_the_client_authenticated() -> None:
    link, out = ready()
    assert link.renew(2.0) is After.NOTHING
    assert out.actions == [CloseServer(abort=True), OpenServer()]
    link, out = ready()
    link.authenticated = True
    assert link.renew(2.0) is After.SIGNED_OFF
    assert out.actions == [CloseServer(abort=True)] and not link.live


def test_a_fresh_connection_forgets_the_authentication() -> None:
    link, _ = ready()
    link.authenticated = True
    link.reconnect(2.0)
    assert not link.authenticated
