"""Protocol screens in the session (core/screen.py through core/session.py): the bot
is caught, the lock-step and PIPELINING-offered client is not. Every conversation
here is re-cut by tests/core/conftest.py."""

from __future__ import annotations

import dataclasses

import pytest

from smtpguard.core.actions import PassLookup, PassRecord
from smtpguard.core.events import PassAnswer
from smtpguard.core.policy import Mode, Policy, ScreenAction, Screens
from tests.core.harness import Harness

ALL_ON = Screens(non_smtp=True, pipelining=True, error_limit=5)


def policy(mode: Mode = Mode.MAILGUARD, **screens: object) -> Policy:
    return Policy.for_mode(
        mode, hostname="gw.example.test", screen=dataclasses.replace(ALL_ON, **screens)
    )


LOCK_STEP = (
    b"HELO client.example.org\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"RCPT TO:<b@example.net>\r\n",
    b"DATA\r\n",
    b"Subject: hi\r\n\r\nhello\r\n.\r\n",
    b"QUIT\r\n",
)


def test_a_web_client_is_dropped_at_once() -> None:
    h = Harness(policy()).start()
    h.client(b"GET / HTTP/1.1\r\nHost: mx\r\nUser-Agent: x\r\n\r\n")
    assert h.run.client_closed
    assert h.run.replies()[-1].startswith(b"554 5.7.0 ")
    assert len(h.run.replies()) == 2  # the greeting, then one answer: not 500 per line
    assert b"GET" not in h.run.server.received
    assert h.run.event_ids() == ["SG-SCREEN-NON-SMTP"]


def test_a_tls_client_on_the_plaintext_port_is_dropped_at_its_first_octets() -> None:
    h = Harness(policy()).start()
    h.client(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64))
    assert h.run.client_closed and h.run.server.closed
    assert h.run.replies()[-1].startswith(b"554 5.7.0 ")
    assert h.run.events[0].action == "drop-connection"
    assert h.run.server.received == b""


def test_non_smtp_log_only_lets_the_session_go_on() -> None:
    h = Harness(policy(non_smtp_action=ScreenAction.LOG, pipelining=False)).start()
    h.client(b"USER root\r\nQUIT\r\n")
    assert h.run.event_ids() == ["SG-SCREEN-NON-SMTP", "SG-CMD-BLOCKED"]
    assert h.run.replies()[-2:] == [b"500 5.5.1 Unrecognized command", b"221 2.0.0 Bye"]


def test_lock_step_client_is_never_caught() -> None:
    h = Harness(policy()).start()
    for line in LOCK_STEP:
        h.client(line)
    assert h.run.event_ids() == []
    assert len(h.run.server.messages) == 1
    assert h.run.replies()[-1] == b"221 2.0.0 Bye"


def test_commands_sent_ahead_are_refused_with_503_in_order() -> None:
    h = Harness(policy()).start()
    h.client(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    h.client(b"RSET\r\n")  # after the replies: read as usual
    h.client(b"NOOP\r\nQUIT\r\n")  # QUIT sent ahead is honoured
    assert h.run.replies()[1:] == [
        b"250 mx.example.test",
        b"503 5.5.0 Command sent before the reply to the previous one (PIPELINING not offered)",
        b"503 5.5.0 Command sent before the reply to the previous one (PIPELINING not offered)",
        b"250 2.0.0 Ok",
        b"250 2.0.0 Ok",
        b"221 2.0.0 Bye",
    ]
    assert b"MAIL" not in h.run.server.received and b"RSET" in h.run.server.received
    assert h.run.event_ids() == ["SG-SCREEN-PIPELINING"]  # once per session


def test_a_message_and_quit_in_one_go_after_the_dot_is_caught() -> None:
    h = Harness(policy()).start()
    for line in LOCK_STEP[:4]:
        h.client(line)
    h.client(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert h.run.event_ids() == ["SG-SCREEN-PIPELINING"]
    assert h.run.replies()[-1] == b"221 2.0.0 Bye"  # QUIT honoured


def test_drop_connection_answers_what_was_asked_first_then_closes() -> None:
    h = Harness(policy(pipelining_action=ScreenAction.DROP)).start()
    h.client(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    assert h.run.replies()[1:] == [
        b"250 mx.example.test",
        b"421 4.7.0 Commands sent before their replies (PIPELINING not offered), "
        b"closing connection",
    ]
    assert h.run.client_closed and b"MAIL" not in h.run.server.received


def test_log_only_relays_the_pipelined_commands() -> None:
    h = Harness(policy(pipelining_action=ScreenAction.LOG)).start()
    h.client(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n")
    assert h.run.event_ids() == ["SG-SCREEN-PIPELINING"]
    assert h.run.replies()[1:] == [b"250 mx.example.test", b"250 2.1.0 Ok", b"221 2.0.0 Bye"]


def test_esmtp_pipelining_offered_is_never_caught() -> None:
    h = Harness(policy(Mode.ESMTP)).start()
    h.client(b"EHLO c\r\n")
    h.client(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    h.client(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    h.client(b"QUIT\r\n")
    assert h.run.event_ids() == ["SG-EHLO-MASKED"]
    assert len(h.run.server.messages) == 1


def test_esmtp_after_helo_or_with_the_keyword_stripped_is_caught() -> None:
    h = Harness(policy(Mode.ESMTP)).start()
    h.client(b"HELO c\r\n")
    h.client(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    assert h.run.event_ids() == ["SG-SCREEN-PIPELINING"]
    stripped = dataclasses.replace(policy(Mode.ESMTP), ehlo_keywords=frozenset({"SIZE"}))
    h = Harness(stripped).start()
    h.client(b"EHLO c\r\n")
    h.client(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    assert "SG-SCREEN-PIPELINING" in h.run.event_ids()


def test_off_lets_a_pipelining_bot_through_as_before() -> None:
    h = Harness(policy(pipelining=False)).start()
    h.client(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n")
    assert h.run.event_ids() == []
    assert h.run.replies()[-1] == b"221 2.0.0 Bye"


def test_the_error_limit_closes_a_dictionary_walker() -> None:
    h = Harness(policy(error_limit=3)).start()
    h.client(b"HELO c\r\n")
    h.client(b"MAIL FROM:<a@example.org>\r\n")
    for name in (b"unknown1", b"unknown2", b"unknown3", b"unknown4"):
        h.client(b"RCPT TO:<%s@example.net>\r\n" % name)
    replies = h.run.replies()
    assert [r[:3] for r in replies[-4:]] == [b"550", b"550", b"550", b"421"]
    assert replies[-1] == b"421 4.7.0 Too many errors (3), closing connection"
    assert h.run.client_closed and b"unknown4" not in h.run.server.received
    assert h.run.event_ids() == ["SG-SCREEN-ERRORS"]


def test_the_error_limit_counts_the_gateways_own_refusals() -> None:
    h = Harness(policy(error_limit=2)).start()
    h.client(b"VRFY root\r\n")
    h.client(b"EXPN staff\r\n")
    assert h.run.replies()[-1] == b"421 4.7.0 Too many errors (2), closing connection"
    assert h.run.client_closed


@pytest.mark.no_recut  # the point: the same octets in one read or two differ
def test_a_line_the_gateway_answers_itself_is_timed_by_the_read() -> None:
    # In one read, QUIT arrived before the 500 to VRFY was written: sent ahead.
    h = Harness(policy(error_limit=0)).start()
    h.client(b"VRFY root\r\nNOOP\r\n")
    assert h.run.event_ids() == ["SG-CMD-BLOCKED", "SG-SCREEN-PIPELINING"]
    # In two reads, after the 500: not.
    h = Harness(policy(error_limit=0)).start()
    h.client(b"VRFY root\r\n")
    h.client(b"NOOP\r\n")
    assert h.run.event_ids() == ["SG-CMD-BLOCKED"]


def test_the_tarpit_holds_each_error_after_the_third_longer_up_to_the_cap() -> None:
    h = Harness(policy(error_limit=0, error_delay=2.0, error_delay_cap=5.0)).start()
    for _ in range(3):
        h.client(b"VRFY a\r\n")
    h.client(b"NOOP\r\n")  # a 2xx is never held
    assert len(h.run.replies()) == 5
    held = []
    for wait in (2.0, 4.0, 5.0):  # the 4th, 5th and 6th errors; the cap
        before = len(h.run.replies())
        h.client(b"VRFY a\r\n")
        assert len(h.run.replies()) == before and h.run.timer == h.now + wait
        h.advance(wait - 0.5)  # the timer fired early (another deadline): still held
        assert len(h.run.replies()) == before
        h.advance(0.5)
        assert h.run.replies()[-1] == b"500 5.5.1 Unrecognized command"
        held.append(len(h.run.replies()) - before)
    assert held == [1, 1, 1]
    h.client(b"QUIT\r\n")
    assert h.run.replies()[-1] == b"221 2.0.0 Bye"


def test_the_tarpit_keeps_replies_in_order_behind_a_held_error() -> None:
    h = Harness(policy(error_limit=0, error_delay=1.0, pipelining=False)).start()
    h.client(b"HELO c\r\n")
    for _ in range(3):
        h.client(b"VRFY a\r\n")
    h.client(b"VRFY a\r\nNOOP\r\n")  # the NOOP's 250 waits behind the held 500
    assert h.run.replies()[-1] == b"500 5.5.1 Unrecognized command"
    assert len(h.run.replies()) == 5
    h.advance(1.0)
    assert h.run.replies()[-2:] == [b"500 5.5.1 Unrecognized command", b"250 2.0.0 Ok"]


# -- pregreet -----------------------------------------------------------------------------
def greeted(h: Harness) -> list[bytes]:
    return [r for r in h.run.replies() if r.startswith(b"220")]


def test_the_greeting_waits_then_the_server_greeting_follows_its_first_line() -> None:
    h = Harness(policy(greet_wait=2.0)).start()
    assert greeted(h) == [b"220-gw.example.test ESMTP"]  # the server's greeting held
    assert PassLookup() in h.actions and h.run.timer == 2.0
    h.advance(1.0)
    assert greeted(h) == [b"220-gw.example.test ESMTP"]
    h.advance(1.0)
    assert greeted(h) == [b"220-gw.example.test ESMTP", b"220 gw.example.test ESMTP"]
    assert PassRecord(86400.0) in h.actions  # waited: remembered
    for line in LOCK_STEP:
        h.client(line)
    assert len(h.run.server.messages) == 1 and h.run.event_ids() == []


def test_an_early_talker_is_dropped_and_not_remembered() -> None:
    h = Harness(policy(greet_wait=2.0)).start()
    h.client(b"HELO bot\r\n")
    assert (
        h.run.replies()[-1] == b"554 5.5.1 Protocol error: talking before the greeting was complete"
    )
    assert h.run.client_closed and b"HELO" not in h.run.server.received
    assert h.run.event_ids() == ["SG-SCREEN-PREGREET"]
    assert not any(isinstance(a, PassRecord) for a in h.actions)


def test_an_address_that_passed_before_is_greeted_at_the_stores_answer() -> None:
    h = Harness(policy(greet_wait=30.0)).start()
    h.feed(PassAnswer(False))  # not known: the wait goes on
    assert greeted(h) == [b"220-gw.example.test ESMTP"]
    h.feed(PassAnswer(True))
    assert greeted(h)[-1] == b"220 gw.example.test ESMTP" and h.now == 0.0
    assert h.run.event_ids() == ["SG-SCREEN-PREGREET-PASSED"]
    assert not any(isinstance(a, PassRecord) for a in h.actions)  # nothing new to record
    h.advance(30.0)  # the old deadline changes nothing
    h.client(b"QUIT\r\n")
    assert h.run.replies()[-1] == b"221 2.0.0 Bye"


def test_an_early_talker_logged_only_is_read_after_the_greeting() -> None:
    h = Harness(policy(greet_wait=1.0, pregreet_action=ScreenAction.LOG, pipelining=False))
    h.start()
    h.client(b"HELO early\r\n")
    assert b"HELO" not in h.run.server.received  # read only once the greeting is out
    h.advance(1.0)
    assert h.run.replies()[-2:] == [b"220 gw.example.test ESMTP", b"250 mx.example.test"]
    assert h.run.event_ids() == ["SG-SCREEN-PREGREET"]
    assert not any(isinstance(a, PassRecord) for a in h.actions)


def test_a_web_client_talking_early_is_dropped_as_non_smtp() -> None:
    h = Harness(policy(greet_wait=1.0, pregreet_action=ScreenAction.LOG)).start()
    h.client(b"GET / HTTP/1.0\r\n\r\n")
    assert h.run.event_ids() == ["SG-SCREEN-PREGREET", "SG-SCREEN-NON-SMTP"]
    assert h.run.client_closed and h.run.replies()[-1].startswith(b"554 5.7.0 ")
