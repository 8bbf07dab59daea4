"""Scripted byte conversations against the core session (Mailguard mode by default)."""

from __future__ import annotations

import pytest

from smtpguard.core.actions import Direction
from smtpguard.core.events import Cut, ServerConnected, Shutdown
from smtpguard.core.policy import (
    BannerPolicy,
    Check,
    Checks,
    Mode,
    Policy,
    StartTls,
    Timeouts,
    Verdict,
)
from smtpguard.core.session import Phase
from tests.core.harness import GREETING, FakeServer, Harness, converse

GENERIC = b"220 gw.example.test ESMTP\r\n"
TXN = (
    b"HELO client.example\r\n"
    b"MAIL FROM:<a@example.org>\r\n"
    b"RCPT TO:<b@example.net>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\nbody line\r\n..dot-stuffed\r\n.\r\n"
    b"QUIT\r\n"
)
TXN_REPLIES = (
    GENERIC + b"250 mx.example.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
    b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 Bye\r\n"
)


def test_plain_transaction_relays_bytes_exactly() -> None:
    run = converse(TXN)
    assert bytes(run.client_out) == TXN_REPLIES
    assert bytes(run.server.received) == TXN  # byte for byte, dot-stuffing untouched
    assert run.server.messages == [b"Subject: hi\r\n\r\nbody line\r\n..dot-stuffed\r\n"]
    assert run.client_closed and run.server.closed and not run.server.aborted


def test_end_of_data_split_one_byte_per_segment() -> None:
    """The seed's failure: CRLF.CRLF arriving in separate segments."""
    run = converse(TXN, cuts=range(len(TXN)))
    assert bytes(run.client_out) == TXN_REPLIES
    assert len(run.server.messages) == 1
    assert bytes(run.client_out).count(b"queued as") == 1


def test_ehlo_answered_locally_and_client_falls_back_to_helo() -> None:
    run = converse(b"EHLO client.example\r\nHELO client.example\r\nQUIT\r\n")
    assert run.replies() == [
        GENERIC.rstrip(b"\r\n"),
        b"500 5.5.1 Unrecognized command",
        b"250 mx.example.test",
        b"221 2.0.0 Bye",
    ]
    assert b"EHLO" not in run.server.received
    assert "SG-CMD-BLOCKED" in run.event_ids()


@pytest.mark.parametrize(
    "line",
    [
        b"VRFY root",
        b"EXPN staff",
        b"STARTTLS",
        b"AUTH PLAIN AGFAYg==",
        b"XCLIENT ADDR=1.2.3.4",
        b"ETRN example.org",
        b"HELP",
        b"TURN",
        b"XEXCH50 1 2",
    ],
)
def test_mailguard_refuses_every_other_verb_locally(line: bytes) -> None:
    run = converse(b"HELO c\r\n" + line + b"\r\nQUIT\r\n")
    assert run.replies()[2] == b"500 5.5.1 Unrecognized command"
    assert line.split()[0] not in run.server.received
    assert run.session_ok if hasattr(run, "session_ok") else True
    assert bytes(run.server.received) == b"HELO c\r\nQUIT\r\n"


def test_esmtp_mode_forwards_ehlo() -> None:
    run = converse(b"EHLO c\r\nQUIT\r\n", policy=Policy.for_mode(Mode.ESMTP, hostname="gw"))
    assert b"EHLO c\r\n" in run.server.received
    assert b"250-PIPELINING" in run.client_out


def test_local_reply_waits_for_earlier_server_replies() -> None:
    h = Harness(auto=False).start().release()
    h.client(b"HELO c\r\n").release()
    h.client(b"MAIL FROM:<a@x>\r\nVRFY b\r\nNOOP\r\n")
    # the server has not answered MAIL yet: the VRFY refusal must not overtake it
    assert bytes(h.run.client_out) == GENERIC + b"250 mx.example.test\r\n"
    h.release()
    assert h.run.replies()[1:] == [
        b"250 mx.example.test",
        b"250 2.1.0 Ok",
        b"500 5.5.1 Unrecognized command",
        b"250 2.0.0 Ok",
    ]


def test_pipelined_input_after_helo_is_held_until_its_reply() -> None:
    h = Harness(auto=False).start().release()
    h.client(b"HELO c\r\nMAIL FROM:<a@x>\r\n")
    assert bytes(h.run.server.received) == b"HELO c\r\n"
    h.release()
    assert h.run.server.received.endswith(b"MAIL FROM:<a@x>\r\n")


def test_client_bytes_after_data_are_held_until_354() -> None:
    h = Harness(auto=False).start().release()
    h.client(b"HELO c\r\n").release()
    h.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhello\r\n.\r\n")
    assert bytes(h.run.server.received) == b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    h.release()  # 250 250 250 354 -> the held message is relayed
    assert h.run.server.received.endswith(b"DATA\r\nhello\r\n.\r\n")
    h.release()
    assert h.run.replies()[-1] == b"250 2.0.0 Ok: queued as Q1"


def test_refused_data_makes_held_bytes_commands_again() -> None:
    run = converse(
        b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<unknown@y>\r\nDATA\r\nNOOP\r\nQUIT\r\n",
        server=FakeServer(refuse_data=True),
    )
    assert run.replies()[4:] == [
        b"554 5.5.1 Error: no valid recipients",
        b"250 2.0.0 Ok",
        b"221 2.0.0 Bye",
    ]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"line\nmore\r\n", "bare LF"),
        (b"line\rmore\r\n", "bare CR"),
        (b"nul\x00\r\n", "NUL"),
        (b"x\r\n\n.\n", "bare LF"),
        (b"x\r\n\r.\r", "bare CR"),
    ],
)
def test_bad_bytes_in_data_refuse_the_partly_relayed_message(bad: bytes, reason: str) -> None:
    script = (
        b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nfirst line\r\n"
        + bad
        + b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n"
        + b"tail\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nok\r\n.\r\nQUIT\r\n"
    )
    run = converse(script)
    first, second = run.servers
    # the first upstream never saw a terminator and was aborted: nothing delivered
    assert first.messages == [] and first.aborted
    assert b"\r\n.\r\n" not in bytes(first.received).split(b"DATA\r\n", 1)[1]
    assert b"smuggled" not in first.received
    reply = f"550 5.6.0 Message refused: {reason} in message data; lines must end in CRLF"
    assert reply.encode() in run.replies()
    # the session goes on: a fresh upstream with HELO replayed, the next message lands
    assert second.received.startswith(b"HELO c\r\nMAIL FROM:<a@x>\r\n")
    assert second.messages == [b"ok\r\n"]
    assert run.replies()[-2:] == [b"250 2.0.0 Ok: queued as Q1", b"221 2.0.0 Bye"]
    assert b"evil" not in first.received + second.received
    assert "SG-DATA-BAD-BYTES" in run.event_ids()


def test_smuggled_lf_dot_lf_is_not_end_of_data() -> None:
    msg = b"a\r\n\n.\nMAIL FROM:<x@y>\r\n"
    run = converse(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n" + msg)
    # no end of data yet: nothing after DATA was answered, nothing relayed as a command
    assert run.replies()[-1] == b"354 End data with <CR><LF>.<CR><LF>"
    assert run.server.messages == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [(b"NOOP\n", "bare LF"), (b"NO\rOP\r\n", "bare CR"), (b"NOOP\x00\r\n", "NUL")],
)
def test_bad_bytes_in_command_line_refused(line: bytes, reason: str) -> None:
    run = converse(b"HELO c\r\n" + line + b"QUIT\r\n")
    assert run.replies()[2] == f"500 5.5.2 Syntax error: {reason} in command line".encode()
    # A bare LF does not end a line: what follows it up to the CRLF is part of the
    # refused line, so here the QUIT never reaches the server.
    expected = (
        b"HELO c\r\n"
        if line.endswith(b"\n") and not line.endswith(b"\r\n")
        else (b"HELO c\r\nQUIT\r\n")
    )
    assert bytes(run.server.received) == expected


def test_command_line_limit_512_including_crlf() -> None:
    ok = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(ok) == 512
    run = converse(ok + b"QUIT\r\n")
    assert run.replies()[1:] == [b"250 2.0.0 Ok", b"221 2.0.0 Bye"]
    too_long = b"NOOP " + b"x" * (513 - 7) + b"\r\n"
    run = converse(too_long + b"QUIT\r\n")
    assert run.replies()[1] == (
        b"421 4.7.0 Command line too long (limit 512 octets), closing connection"
    )
    assert run.client_closed and b"NOOP" not in run.server.received
    assert "SG-CMD-TOO-LONG" in run.event_ids()


def test_overlong_line_without_newline_is_cut_off_early() -> None:
    h = Harness().start()
    h.client(b"x" * 10_000)
    assert h.run.client_closed
    assert h.session.client_backlog <= 10_000


def test_command_line_limit_reject_action_keeps_session() -> None:
    policy = Policy(
        hostname="gw.example.test", checks=Checks(command_line_length=Check(Verdict.REJECT, 512))
    )
    run = converse(b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\nQUIT\r\n", cuts=[100, 300], policy=policy)
    assert run.replies()[1:] == [
        b"500 5.5.2 Command line too long",
        b"250 2.0.0 Ok",
        b"221 2.0.0 Bye",
    ]


def test_command_line_limit_reset_action() -> None:
    policy = Policy(hostname="gw", checks=Checks(command_line_length=Check(Verdict.RESET, 512)))
    run = converse(b"N" * 600, policy=policy)
    assert run.client_reset


def test_upstream_unreachable_gives_421() -> None:
    run = converse(b"HELO c\r\n", connect_fails=True)
    assert run.replies() == [b"421 4.4.1 Service not available, closing connection"]
    assert run.client_closed


def test_upstream_lost_before_final_reply_gives_451_and_session_continues() -> None:
    h = Harness(auto=False).start().release()
    h.client(b"HELO c\r\n").release()
    h.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n").release()
    h.client(b"body\r\n.\r\n")  # the server has the message but dies before answering
    h.pending.clear()
    h.server_drops()
    assert h.run.replies()[-1] == (
        b"451 4.4.2 Connection to mail server lost, message not delivered; try again later"
    )
    assert len(h.run.servers) == 2  # reconnected
    h.release()  # greeting of the second server -> HELO replayed
    h.release()
    h.client(b"NOOP\r\n").release()
    assert h.run.replies()[-1] == b"250 2.0.0 Ok"
    assert b"250 mx.example.test" not in bytes(h.run.client_out).split(b"451")[1]


def test_upstream_lost_mid_data_answers_451_after_client_end_of_data() -> None:
    h = Harness().start()
    h.client(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\npart one\r\n")
    h.server_drops()
    h.client(b"part two\r\n")
    assert not h.run.replies()[-1].startswith(b"451")
    h.client(b".\r\nQUIT\r\n")
    assert h.run.replies()[-2:] == [
        b"451 4.4.2 Connection to mail server lost, message not delivered; try again later",
        b"221 2.0.0 Bye",
    ]


def test_upstream_lost_while_idle_is_reopened_by_the_next_command() -> None:
    h = Harness().start().client(b"HELO c\r\n").server_drops()
    assert h.run.replies()[-1] == b"250 mx.example.test" and not h.run.client_closed
    h.client(b"NOOP\r\n")
    assert len(h.run.servers) == 2  # a fresh connection, the HELO replayed
    assert h.run.replies()[-1] == b"250 2.0.0 Ok"


def test_upstream_lost_with_mail_accepted_gives_421() -> None:
    h = Harness().start().client(b"HELO c\r\nMAIL FROM:<a@x>\r\n").server_drops()
    assert h.run.replies()[-1] == b"421 4.4.2 Connection to mail server lost, closing connection"
    assert h.run.client_closed


def test_reconnect_failure_after_refusal_gives_421() -> None:
    h = Harness().start()
    h.client(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nbad\nline\r\n")
    h.connect_fails = True
    h.client(b".\r\n")
    assert h.run.replies()[-2:] == [
        b"550 5.6.0 Message refused: bare LF in message data; lines must end in CRLF",
        b"421 4.4.1 Service not available, closing connection",
    ]
    assert h.run.client_closed


@pytest.mark.parametrize(
    ("policy", "greeting", "expected"),
    [
        (Policy(hostname="gw.example.test"), GREETING, GENERIC),
        (Policy(banner=BannerPolicy.PASS), GREETING, GREETING),
        (
            Policy(banner=BannerPolicy.CUSTOM, banner_text="mail service"),
            GREETING,
            b"220 mail service\r\n",
        ),
        (
            Policy(banner=BannerPolicy.PIX),
            b"220 mx.example.com ESMTP Postfix 2.0\r\n",
            b"220 " + b"*" * 29 + b"2*0\r\n",
        ),
        (
            Policy(banner=BannerPolicy.PIX),
            b"220-first\r\n220 second 2000\r\n",
            b"220-*****\r\n220 *******2000\r\n",
        ),
        # a refusal keeps its code, but not the server's text (it names the server)
        (
            Policy(hostname="gw"),
            b"554 5.3.2 mx.example.com Postfix go away\r\n",
            b"554 5.3.2 gw Service not available\r\n",
        ),
        (Policy(banner=BannerPolicy.PASS), b"554 5.3.2 go away\r\n", b"554 5.3.2 go away\r\n"),
        (Policy(banner=BannerPolicy.PIX), b"554 go away 2\r\n", b"554 ********2\r\n"),
    ],
)
def test_banner_policies(policy: Policy, greeting: bytes, expected: bytes) -> None:
    run = converse(b"", server=FakeServer(greeting=greeting), policy=policy)
    assert bytes(run.client_out) == expected


def test_generic_banner_does_not_look_like_a_pix_mask() -> None:
    run = converse(b"")
    text = bytes(run.client_out)[4:].rstrip(b"\r\n")
    assert set(text) - set(b"20 *\t")


def test_greeting_421_closes() -> None:
    run = converse(b"HELO c\r\n", server=FakeServer(greeting=b"421 4.3.2 busy\r\n"))
    assert run.replies() == [b"421 4.3.2 gw.example.test Service not available"]
    assert run.client_closed


def test_bdat_chunk_is_drained_not_parsed() -> None:
    chunk = b"QUIT\r\nRSET\r\n"
    run = converse(
        b"HELO c\r\nBDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\nQUIT\r\n", cuts=[12, 15]
    )
    assert run.replies()[2:] == [
        b"502 5.5.1 BDAT (CHUNKING) not supported here",
        b"250 2.0.0 Ok",
        b"221 2.0.0 Bye",
    ]
    assert bytes(run.server.received) == b"HELO c\r\nNOOP\r\nQUIT\r\n"


def test_bdat_without_size_closes() -> None:
    run = converse(b"BDAT lots\r\nQUIT\r\n")
    assert run.replies()[1].startswith(b"421 4.7.0") and run.client_closed


def test_client_idle_timeout() -> None:
    h = Harness(Policy(timeouts=Timeouts(client_idle=10))).start().client(b"HELO c\r\n")
    assert h.run.timer == 10
    h.advance(5)
    assert not h.run.client_closed
    h.advance(5)
    assert h.run.replies()[-1] == b"421 4.4.2 Idle timeout exceeded, closing connection"
    assert h.run.client_closed and h.run.server.closed


def test_server_reply_timeout_on_final_dot() -> None:
    h = Harness(Policy(timeouts=Timeouts(data_end=60)), auto=False).start().release()
    h.client(b"HELO c\r\n").release()
    h.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n").release()
    h.client(b"x\r\n.\r\n")
    h.pending.clear()
    # the timer armed at start (connect, 30 s) fires first: nothing has expired, so
    # the core re-arms it for the final-reply deadline
    assert h.run.timer == 30
    h.advance(30)
    assert h.run.timer == 60 and not h.run.replies()[-1].startswith(b"451")
    h.advance(30)
    assert h.run.replies()[-1].startswith(b"451 4.4.2")
    assert "SG-UPSTREAM-TIMEOUT" in h.run.event_ids()


def test_eof_after_pipelined_commands_still_answers_them() -> None:
    run = converse(b"HELO c\r\nNOOP\r\n")
    assert run.replies()[1:] == [b"250 mx.example.test", b"250 2.0.0 Ok"]
    assert run.client_closed


def test_eof_mid_message_aborts_upstream() -> None:
    run = converse(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\npartial\r\n")
    assert run.server.messages == [] and run.server.aborted and run.client_closed


def test_server_421_in_a_transaction_is_forwarded_and_closes() -> None:
    h = Harness().start().client(b"HELO c\r\nMAIL FROM:<a@x>\r\n")
    h.server_says(b"421 4.4.2 shutting down\r\n")
    assert h.run.replies()[-1] == b"421 4.4.2 shutting down" and h.run.client_closed


def test_unsolicited_reply_is_logged_not_forwarded() -> None:
    h = Harness().start().client(b"HELO c\r\n").server_says(b"250 surprise\r\n")
    assert b"surprise" not in h.run.client_out
    assert "SG-UPSTREAM-UNSOLICITED" in h.run.event_ids()


def test_malformed_server_reply_drops_upstream() -> None:
    h = Harness(auto=False).start().release().client(b"HELO c\r\n")
    h.pending.clear()
    h.server_says(b"hello there\r\n")
    assert h.run.replies()[-1].startswith(b"421 4.4.2")


def test_drain_waits_for_transaction_in_flight() -> None:
    h = Harness().start()
    h.client(b"HELO c\r\nMAIL FROM:<a@x>\r\n")
    h.feed(Shutdown())
    assert not h.run.client_closed
    h.client(b"RCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\n")
    assert h.run.server.messages == [b"x\r\n"]
    h.client(b"MAIL FROM:<a@x>\r\n")
    assert h.run.replies()[-1] == b"421 4.3.2 Service shutting down, closing connection"
    assert h.run.client_closed


def test_drain_closes_idle_session_at_once() -> None:
    h = Harness().start().client(b"HELO c\r\n")
    h.feed(Shutdown())
    assert h.run.client_closed


SHUT = b"421 4.3.2 Service shutting down, closing connection"


def test_cut_mid_message_says_421_and_the_server_never_gets_the_end() -> None:
    h = Harness().start()
    h.client(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: x\r\n\r\npart")
    h.feed(Shutdown())
    assert not h.run.client_closed  # the drain waits for the transaction
    h.feed(Cut())
    assert h.run.replies()[-1] == SHUT
    assert h.run.client_closed and not h.run.client_reset
    assert h.run.server.aborted and h.run.server.messages == []
    assert h.session.closed


def test_cut_while_the_final_reply_is_owed_is_never_a_250() -> None:
    """The end of data went to the server; its reply has not come: 421, not 250."""
    h = Harness(auto=False).start().release()
    for line in (b"HELO c", b"MAIL FROM:<a@x>", b"RCPT TO:<b@y>", b"DATA"):
        h.client(line + b"\r\n").release()
    h.client(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert h.run.server.messages == [b"Subject: x\r\n\r\nbody\r\n"]
    assert h.pending.startswith(b"250")  # the server's reply, not delivered yet
    h.feed(Cut())
    h.release()  # too late: the upstream is gone
    assert h.run.replies()[-1] == SHUT
    assert not any(r.startswith(b"250 2.0.0") for r in h.run.replies())
    assert h.run.client_closed and h.run.server.aborted


def test_cut_keeps_replies_the_server_already_sent_in_order() -> None:
    h = Harness(auto=False).start().release()
    h.client(b"HELO c\r\n").release()
    h.client(b"NOOP\r\nNOOP\r\n")
    h.server_says(b"250 2.0.0 Ok\r\n")  # the first NOOP's reply; the second is owed
    h.feed(Cut())
    assert h.run.replies()[-2:] == [b"250 2.0.0 Ok", SHUT]


def test_cut_of_a_tls_tunnel_says_nothing_into_it() -> None:
    h = Harness(Policy(mode=Mode.ESMTP, starttls=StartTls.PASSTHROUGH)).start()
    h.client(b"EHLO c\r\nSTARTTLS\r\n")
    assert h.session.phase is Phase.TUNNEL
    before = bytes(h.run.client_out)
    h.feed(Cut())
    assert bytes(h.run.client_out) == before and h.run.client_closed


def test_held_bytes_are_bounded_by_backpressure_signal() -> None:
    h = Harness(Policy(max_pending=4), auto=False).start().release()
    h.client(b"NOOP\r\n" * 1000)
    assert h.session.client_backlog > 0  # held, not parsed: the driver pauses reading
    assert h.run.server.received.count(b"NOOP") == 4


def test_auth_exchange_in_esmtp_mode_relays_sasl_lines() -> None:
    h = Harness(Policy.for_mode(Mode.ESMTP), auto=False).start().release()
    h.client(b"EHLO c\r\n").release()
    h.client(b"AUTH LOGIN\r\ndXNlcg==\r\n")
    assert h.run.server.received.endswith(b"AUTH LOGIN\r\n")  # response held
    h.server_says(b"334 VXNlcm5hbWU6\r\n")
    assert h.run.server.received.endswith(b"dXNlcg==\r\n")
    assert h.session.phase is Phase.WAIT
    h.server_says(b"235 2.7.0 ok\r\n")
    assert h.run.replies()[-1] == b"235 2.7.0 ok"
    assert all("dXNlcg" not in t.line for t in h.run.traces)


def test_traces_cover_four_directions_and_data_size_only() -> None:
    run = converse(TXN)
    dirs = {t.direction for t in run.traces}
    assert dirs == set(Direction)
    assert all(b"body line" not in t.line.encode() for t in run.traces)
    sizes = [t.size for t in run.traces if t.size is not None]
    assert sizes == [len(b"Subject: hi\r\n\r\nbody line\r\n..dot-stuffed\r\n.\r\n")]


def test_never_a_false_250_when_server_refuses_message() -> None:
    class Refuser(FakeServer):
        def feed(self, data: bytes) -> bytes:
            out = super().feed(data)
            return out.replace(b"250 2.0.0 Ok: queued", b"554 5.7.1 refused")

    h = Harness(server=None)
    h.template = Refuser()
    h._open = lambda: _open_with(h, Refuser())  # type: ignore[method-assign]
    h.start().client(TXN)
    assert b"queued" not in h.run.client_out
    assert b"554 5.7.1 refused" in h.run.client_out


def _open_with(h: Harness, srv: FakeServer) -> None:
    h.run.servers.append(srv)
    h.live = True
    h.feed(ServerConnected())
    h._server_says(srv.greeting)
