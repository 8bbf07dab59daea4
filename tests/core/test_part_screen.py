"""The screen part alone, without a session: fed the octets as they arrive, the
replies as they are sent and where each command line starts, it returns a verdict
(core/screen.py). Every input whole, one byte at a time, and with data after it."""

from __future__ import annotations

import dataclasses

import pytest

from smtpguard.core.policy import ScreenAction, Screens
from smtpguard.core.screen import NON_SMTP_OPENINGS, Caught, Screen, opening

ON = Screens(non_smtp=True, pipelining=True, error_limit=3)


def cuts(data: bytes) -> list[list[bytes]]:
    """Whole, one byte at a time, and in two halves."""
    half = len(data) // 2
    return [[data], [data[i : i + 1] for i in range(len(data))], [data[:half], data[half:]]]


def first_verdict(screen: Screen, parts: list[bytes]) -> tuple[int, Caught | None]:
    """Feed ``parts``: the index of the part that got a verdict, and the verdict."""
    for i, part in enumerate(parts):
        caught = screen.arrived(part)
        if caught is not None:
            return i, caught
    return -1, None


# -- non-SMTP openings ------------------------------------------------------------------
HOSTILE_OPENINGS = [
    b"GET / HTTP/1.1\r\nHost: mx\r\n\r\n",
    b"GET http://example.org/ HTTP/1.0\r\n\r\n",
    b"POST /cgi-bin/x HTTP/1.1\r\n",
    b"HEAD / HTTP/1.0\r\n",
    b"CONNECT 192.0.2.1:25 HTTP/1.1\r\n",
    b"user anonymous\r\n",
    b"USER root\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a ClientHello
]
SMTP_OPENINGS = [
    b"HELO client.example.org\r\n",
    b"EHLO [192.0.2.1]\r\n",
    b"helo x\r\n",
    b"QUIT\r\n",
    b"NOOP\r\n",
    b"\r\n",
    b"GE\r\n",  # a prefix of GET, then not
    b"USERS\r\n",
    b"POSTMASTER\r\n",
    b"\x16\x04",
]


@pytest.mark.parametrize("data", HOSTILE_OPENINGS)
@pytest.mark.parametrize("how", range(3))
def test_other_protocols_are_caught_at_the_octet_that_decides(data: bytes, how: int) -> None:
    parts = cuts(data + b"trailing data after it")[how]
    screen = Screen(ON)
    index, caught = first_verdict(screen, parts)
    assert caught is not None and caught.event_id == "SG-SCREEN-NON-SMTP"
    assert caught.action is ScreenAction.DROP and caught.reply.startswith(b"554 5.7.0 ")
    found = opening(data)
    assert found
    decided = len(found)  # the octets it takes to tell
    assert sum(len(p) for p in parts[: index + 1]) >= decided
    assert sum(len(p) for p in parts[:index]) < decided
    assert all(screen.arrived(p) is None for p in parts[index + 1 :])  # once


@pytest.mark.parametrize("data", SMTP_OPENINGS)
@pytest.mark.parametrize("how", range(3))
def test_smtp_openings_are_never_caught(data: bytes, how: int) -> None:
    screen = Screen(ON)
    assert first_verdict(screen, cuts(data + b"GET / HTTP/1.1\r\n")[how]) == (-1, None)


def test_off_means_off_and_log_is_kept() -> None:
    screen = Screen(dataclasses.replace(ON, non_smtp=False))
    assert first_verdict(screen, [b"GET / HTTP/1.1\r\n"]) == (-1, None)
    log = Screen(dataclasses.replace(ON, non_smtp_action=ScreenAction.LOG))
    _i, caught = first_verdict(log, [b"CONNECT x:25 HTTP/1.1\r\n"])
    assert caught is not None and caught.action is ScreenAction.LOG


def test_every_opening_is_named_in_the_event() -> None:
    for p in NON_SMTP_OPENINGS:
        caught = Screen(ON).arrived(p + b"x")
        assert caught is not None and caught.message.startswith("not an SMTP client")


# -- pipelining -------------------------------------------------------------------------
class Wire:
    """A minimal line reader over the screen, as the session reads: each complete line
    is read at once, ``owed`` while its reply is outstanding; ``answer`` sends it."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self.buffer = b""
        self.owed = 0
        self.verdicts: list[bytes] = []  # the lines caught

    def arrive(self, data: bytes) -> None:
        self.screen.arrived(data)
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            caught = self.screen.command(line + b"\r\n", len(self.buffer), self.owed > 0, False)
            if caught is not None:
                self.verdicts.append(line)
            self.owed += 1

    def answer(self, reply: bytes = b"250 ok\r\n") -> None:
        self.owed -= 1
        self.screen.replied(reply)


@pytest.mark.parametrize("how", range(3))
def test_lock_step_is_never_caught(how: int) -> None:
    wire = Wire(Screen(ON))
    for line in (b"HELO c\r\n", b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"QUIT\r\n"):
        for part in cuts(line)[how]:
            wire.arrive(part)
        wire.answer()
    assert wire.verdicts == []


@pytest.mark.parametrize("how", range(3))
def test_a_command_sent_before_the_reply_is_caught_in_any_segmentation(how: int) -> None:
    wire = Wire(Screen(ON))
    for part in cuts(b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")[how]:
        wire.arrive(part)
    wire.answer()
    assert wire.verdicts == [b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>"]


def test_the_next_line_started_before_the_reply_is_caught_when_read_after_it() -> None:
    # HELO is answered while the first octets of MAIL are already in: MAIL was sent
    # ahead even though the gateway reads it after the reply went out.
    screen = Screen(ON)
    screen.arrived(b"HELO c\r\nMA")
    assert screen.command(b"HELO c\r\n", 2, False, False) is None  # HELO itself
    screen.replied(b"250 ok\r\n")
    screen.arrived(b"IL FROM:<a@b>\r\n")
    caught = screen.command(b"MAIL FROM:<a@b>\r\n", 0, False, False)
    assert caught is not None and caught.first
    assert caught.reply.startswith(b"503 5.5.0 ")


def test_trailing_octets_after_the_reply_are_not_sent_ahead() -> None:
    screen = Screen(ON)
    screen.arrived(b"HELO c\r\n")
    assert screen.command(b"HELO c\r\n", 0, False, False) is None
    screen.replied(b"250 ok\r\n")
    screen.arrived(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")  # MAIL after the reply
    rcpt = b"RCPT TO:<c@d>\r\n"
    assert screen.command(b"MAIL FROM:<a@b>\r\n", len(rcpt), False, False) is None
    assert screen.command(b"RCPT TO:<c@d>\r\n", 0, True, False) is not None  # ahead


def test_pipelining_offered_or_screen_off_is_quiet() -> None:
    screen = Screen(ON)
    screen.arrived(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    assert screen.command(b"RCPT TO:<c@d>\r\n", 0, True, True) is None
    off = Screen(dataclasses.replace(ON, pipelining=False))
    off.arrived(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    assert off.command(b"RCPT TO:<c@d>\r\n", 0, True, False) is None


def test_a_quit_sent_ahead_is_only_logged_by_reject_but_dropped_by_drop() -> None:
    screen = Screen(ON)
    screen.arrived(b"NOOP\r\nQUIT\r\n")
    caught = screen.command(b"QUIT\r\n", 0, True, False)
    assert caught is not None and caught.action is ScreenAction.LOG
    drop = Screen(dataclasses.replace(ON, pipelining_action=ScreenAction.DROP))
    drop.arrived(b"NOOP\r\nQUIT\r\n")
    assert drop.command(b"QUIT\r\n", 0, True, False) is not None


def test_the_drop_action_closes_with_421_and_the_event_is_once() -> None:
    screen = Screen(dataclasses.replace(ON, pipelining_action=ScreenAction.DROP))
    screen.arrived(b"A\r\nB\r\nC\r\n")
    first = screen.command(b"B\r\n", 3, True, False)
    again = screen.command(b"C\r\n", 0, True, False)
    assert first is not None and first.first and first.reply.startswith(b"421 4.7.0 ")
    assert again is not None and not again.first


# -- error limit ------------------------------------------------------------------------
def test_the_error_limit_counts_4xx_and_5xx_only_and_fires_once() -> None:
    screen = Screen(ON)  # error_limit 3
    verdicts = [
        screen.replied(r)
        for r in (
            b"250 ok\r\n",
            b"550 no\r\n",
            b"354 go\r\n",
            b"451 later\r\n",
            b"221 bye\r\n",
            b"503 bad\r\n",
            b"421 closing\r\n",
        )
    ]
    caught = [v for v in verdicts if v is not None]
    assert len(caught) == 1 and verdicts[5] is caught[0]
    assert caught[0].event_id == "SG-SCREEN-ERRORS" and caught[0].reply.startswith(b"421 4.7.0 ")
    assert Screen(Screens()).replied(b"550 no\r\n") is None  # 0: off


def test_the_tarpit_holds_errors_after_the_third_growing_to_the_cap() -> None:
    screen = Screen(Screens(error_delay=2.0, error_delay_cap=5.0))
    for reply in (b"550 a\r\n", b"250 ok\r\n", b"550 b\r\n", b"421 bye\r\n", b"550 c\r\n"):
        assert screen.tarpit(reply) is None  # the first three errors; a 2xx; a 421
        screen.replied(reply)
    waits = []
    for _ in range(3):
        asked = screen.now
        at = screen.tarpit(b"550 d\r\n")
        assert at is not None
        screen.now = at - 0.1
        assert screen.tarpit(b"550 d\r\n") == at  # asked again before its time
        screen.now = at
        assert screen.tarpit(b"550 d\r\n") is None  # due: sent
        screen.replied(b"550 d\r\n")
        waits.append(at - asked)
        assert screen.tarpit(b"250 ok\r\n") is None  # never a 2xx
        screen.now += 1.0
    assert waits == [2.0, 4.0, 5.0]
