"""Core conversations written as exact playbooks: every event in, every action out
(timers and protocol-log traces aside). tests/core/conftest.py re-cuts each."""

from __future__ import annotations

import dataclasses

from smtpguard.core.actions import (
    CloseClient,
    CloseServer,
    OpenServer,
    PolicyEvent,
    ServerOutcome,
    SetTimer,
)
from smtpguard.core.actions import ToClient as C
from smtpguard.core.actions import ToServer as S
from smtpguard.core.events import (
    ClientData,
    ClientEof,
    ServerClosed,
    ServerConnected,
    ServerData,
    Start,
    TimerFired,
)
from smtpguard.core.policy import Mode, Policy, Timeouts
from smtpguard.core.session import Session
from tests.core.playbook import At, Playbook

POLICY = Policy(hostname="gw.example.test")
GREETING = b"220 mx.example.test ESMTP Postfix\r\n"


def opened(policy: Policy = POLICY, **kw: bool) -> Playbook:
    return (
        Playbook(Session(policy), **kw)
        >> Start()
        << OpenServer()
        >> ServerConnected()
        >> ServerData(GREETING)
        << ServerOutcome(True)
        << C(b"220 gw.example.test ESMTP\r\n")
    )


def greeted() -> Playbook:
    """Connected, greeted, and the client's HELO accepted."""
    return (
        opened()
        >> ClientData(b"HELO c\r\n")
        << S(b"HELO c\r\n")
        >> ServerData(b"250 mx\r\n")
        << C(b"250 mx\r\n")
    )


def test_a_message_end_to_end() -> None:
    assert (
        greeted()
        >> ClientData(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\nSubject")
        # pipelined up to DATA; what follows DATA waits for the server's answer to it
        << S(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
        >> ServerData(b"250 ok\r\n250 ok\r\n354 go\r\n")
        << C(b"250 ok\r\n250 ok\r\n354 go\r\n")
        << S(b"Subject")
        >> ClientData(b": s\r\n\r\nhi\r\n.\r\n")
        << S(b": s\r\n\r\nhi\r\n.\r\n")
        >> ServerData(b"250 2.0.0 queued as A1\r\n")
        << C(b"250 2.0.0 queued as A1\r\n")
        >> ClientData(b"QUIT\r\n")
        << S(b"QUIT\r\n")
        >> ServerData(b"221 bye\r\n")
        << C(b"221 bye\r\n")
        << CloseServer()
        << CloseClient()
    )


def test_a_refused_verb_waits_for_the_earlier_reply() -> None:
    esmtp = Policy.for_mode(Mode.ESMTP, hostname="gw.example.test")
    assert (
        opened(esmtp)
        >> ClientData(b"EHLO c\r\n")
        << S(b"EHLO c\r\n")
        >> ServerData(b"250-mx\r\n250 PIPELINING\r\n")
        << C(b"250-mx\r\n250 PIPELINING\r\n")
        >> ClientData(b"NOOP\r\nEXPN x\r\nNOOP\r\n")
        << S(b"NOOP\r\n")
        << PolicyEvent("SG-CMD-BLOCKED", "EXPN refused: not allowed in esmtp mode", "reject")
        << S(b"NOOP\r\n")
        >> ServerData(b"250 one\r\n250 two\r\n")
        << C(b"250 one\r\n500 5.5.1 Unrecognized command\r\n250 two\r\n")
    )


def test_a_smuggled_end_of_data_is_refused_and_the_upstream_aborted() -> None:
    assert (
        greeted()
        >> ClientData(b"DATA\r\n")
        << S(b"DATA\r\n")
        >> ServerData(b"354 go\r\n")
        << C(b"354 go\r\n")
        >> ClientData(b"a\r\n.\nMAIL FROM:<evil@x>\r\n.\r\n")
        << PolicyEvent("SG-DATA-BAD-BYTES", "bare LF in message data: message refused", "reject")
        << S(b"a\r\n.")
        << CloseServer(abort=True)
        << C(b"550 5.6.0 Message refused: bare LF in message data; lines must end in CRLF\r\n")
        << OpenServer()
        >> ServerConnected()
        >> ServerData(GREETING)
        << ServerOutcome(True)
        << S(b"HELO c\r\n")  # the client's hello, replayed on the fresh connection
        >> ServerData(b"250 mx\r\n")
    )


def test_a_lost_server_before_the_final_reply_is_451_never_250() -> None:
    assert (
        greeted()
        >> ClientData(b"DATA\r\n")
        << S(b"DATA\r\n")
        >> ServerData(b"354 go\r\n")
        << C(b"354 go\r\n")
        >> ClientData(b"hi\r\n.\r\n")
        << S(b"hi\r\n.\r\n")
        >> ServerClosed()
        << PolicyEvent("SG-UPSTREAM-LOST", "mail server lost before its final reply", "log")
        << OpenServer()
        << C(
            b"451 4.4.2 Connection to mail server lost, message not delivered; try again later\r\n"
        )
    )


def test_idle_client_times_out_with_421() -> None:
    policy = dataclasses.replace(POLICY, timeouts=Timeouts(client_idle=10.0))
    assert (
        Playbook(Session(policy), timers=True)
        >> Start()
        << OpenServer()
        << SetTimer(10.0)  # the client's idle time runs from the start, connect or not
        >> ServerConnected()
        >> ServerData(GREETING)
        << ServerOutcome(True)
        << C(b"220 gw.example.test ESMTP\r\n")
        >> At(10.0)
        >> TimerFired()
        << PolicyEvent("SG-CLIENT-TIMEOUT", "client idle past the timeout", "log")
        << C(b"421 4.4.2 Idle timeout exceeded, closing connection\r\n")
        << CloseServer()
        << CloseClient()
    )


def test_half_close_after_a_whole_session_in_one_segment() -> None:
    assert (
        opened()
        >> ClientData(b"HELO c\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
        >> ClientEof()
        << S(b"HELO c\r\n")
        >> ServerData(b"250 mx\r\n")
        << C(b"250 mx\r\n")
        << S(b"DATA\r\n")
        >> ServerData(b"354 go\r\n")
        << C(b"354 go\r\n")
        << S(b"hi\r\n.\r\nQUIT\r\n")  # QUIT is not held: it follows the message at once
        >> ServerData(b"250 queued\r\n221 bye\r\n")
        << C(b"250 queued\r\n221 bye\r\n")
        << CloseServer()
        << CloseClient()
    )
