"""The commands part alone, without a session: fed the client's bytes through the
receive buffer, it frames lines (whole input, one byte at a time, trailing data
left in the buffer), relays or answers each, and returns what the session must do:
a ``Then`` (send, move the phase by a trigger, reset) or a ``Close``."""

from __future__ import annotations

import dataclasses

import pytest

from smtpguard.core import replies
from smtpguard.core.actions import PolicyEvent, ToServer
from smtpguard.core.buffer import ReceiveBuffer
from smtpguard.core.checks import Rates
from smtpguard.core.commands import Close, Commands, Then
from smtpguard.core.deadlines import Deadlines
from smtpguard.core.output import Output
from smtpguard.core.phases import Greet, hello
from smtpguard.core.pipeline import ReplyPipeline
from smtpguard.core.policy import Check, Mode, Policy, StartTls, Verdict

POLICY = Policy(hostname="gw.example.test")


class Part:
    def __init__(self, policy: Policy = POLICY) -> None:
        self.out = Output(False)
        self.buffer = ReceiveBuffer()
        self.replies = ReplyPipeline()
        self.deadlines = Deadlines()
        self.cmds = Commands(
            policy, self.out, self.buffer, self.replies, self.deadlines, Rates(), None, False
        )

    def feed(self, chunks: list[bytes]) -> list[Then | Close]:
        """Every decision on the lines in ``chunks``, read as the session reads."""
        got: list[Then | Close] = []
        for chunk in chunks:
            self.buffer.append(chunk)
            while True:
                line = self.cmds.next_line()
                if line is None:
                    break
                if not isinstance(line, bytes):
                    got.append(line)
                    if line is Then.FLUSH:
                        continue
                    break
                got.append(self.cmds.command(line, 0.0))
        return got

    def sent(self) -> list[bytes]:
        return [bytes(a.data) for a in self.out.actions if isinstance(a, ToServer)]

    def answered(self) -> list[bytes | None]:
        return [slot.reply for slot in self.replies.slots]


def cuts(data: bytes) -> list[list[bytes]]:
    return [[data], [data[i : i + 1] for i in range(len(data))]]


SCRIPT = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nVRFY b\r\nDATA\r\n"


@pytest.mark.parametrize("chunks", cuts(SCRIPT) + cuts(SCRIPT + b"Subject: x\r"))
def test_lines_are_forwarded_refused_or_held(chunks: list[bytes]) -> None:
    part = Part()
    got = part.feed(chunks)
    assert got == [Then.NOTHING, Then.NOTHING, Then.FLUSH, Then.HOLD]
    assert part.sent() == SCRIPT.replace(b"VRFY b\r\n", b"").splitlines(keepends=True)
    assert part.answered() == [None, None, replies.UNRECOGNIZED, None]
    assert len(part.replies.awaiting) == 3 and part.deadlines.server is not None
    assert part.cmds.refused == 1
    assert part.cmds.counts() == {
        ("MAIL", "forwarded"): 1,
        ("RCPT", "forwarded"): 1,
        ("DATA", "forwarded"): 1,
        ("VRFY", "refused"): 1,  # a known verb, counted by name
    }
    if b"".join(chunks).endswith(b"\r"):
        assert part.buffer.data == b"Subject: x\r"  # trailing data: the session's


def test_quit_and_rset() -> None:
    part = Part()
    part.cmds.envelope.rcpt_count = 3
    assert part.feed([b"RSET\r\nQUIT\r\n"]) == [Then.NOTHING, Then.QUIT]
    assert part.cmds.envelope.rcpt_count == 0


LONG = b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n"


@pytest.mark.parametrize("chunks", cuts(LONG))
def test_an_over_long_line_is_skipped_and_answered(chunks: list[bytes]) -> None:
    checks = dataclasses.replace(POLICY.checks, command_line_length=Check(Verdict.REJECT, 512))
    part = Part(dataclasses.replace(POLICY, checks=checks))
    assert part.feed(chunks) == [Then.FLUSH, Then.NOTHING]
    assert part.answered() == [replies.LINE_TOO_LONG, None]
    assert part.sent() == [b"NOOP\r\n"]


def test_an_over_long_line_drops_by_default() -> None:
    part = Part()
    (got,) = part.feed([LONG])
    assert isinstance(got, Close) and not got.abort


def test_bare_lf_lines_are_refused_then_the_client_dropped() -> None:
    part = Part()
    got = part.feed([b"NOOP\na\r\n"] * 3)
    assert got[:2] == [Then.FLUSH, Then.FLUSH]
    assert isinstance(got[2], Close) and part.cmds.bad_lines == 3
    assert part.sent() == []


@pytest.mark.parametrize("chunks", cuts(b"12345NOOP\r\n"))
def test_bdat_is_refused_and_its_chunk_drained(chunks: list[bytes]) -> None:
    part = Part()
    assert part.feed([b"BDAT 5\r\n"]) == [Then.BDAT]
    drained = False
    for chunk in chunks:
        part.buffer.append(chunk)
        drained = drained or part.cmds.drain_bdat()
    assert drained and part.answered() == [replies.BDAT_REFUSED]
    assert bytes(part.buffer.data) == b"NOOP\r\n"  # trailing data: commands again


def test_after_tls_only_a_hello_opens_the_session() -> None:
    part = Part()
    part.cmds.hello = hello(part.cmds.hello, Greet.TLS_STARTED)
    assert part.feed([b"MAIL FROM:<a@example.org>\r\nHELO me\r\n"]) == [Then.FLUSH, Then.HOLD]
    assert part.answered()[0] == replies.SEND_HELLO_FIRST


def test_a_bad_auth_response_becomes_a_cancel() -> None:
    part = Part()
    assert part.cmds.auth_response(b"abc\x00def\r\n", 0.0) is Then.AUTH_LINE
    assert part.sent() == [b"*\r\n"]
    owed = part.replies.slots[-1]
    assert owed.verb == "AUTH" and owed.cancelled == "NUL"
    assert any(isinstance(a, PolicyEvent) for a in part.out.actions)
    assert part.cmds.auth_response(b"dGVzdA==\r\n", 0.0) is Then.AUTH_LINE
    assert part.sent()[-1] == b"dGVzdA==\r\n"


def test_an_invalid_recipient_limit_blocks_later_rcpts() -> None:
    checks = dataclasses.replace(POLICY.checks, invalid_recipients=Check(Verdict.REJECT, 1))
    part = Part(dataclasses.replace(POLICY, checks=checks))
    assert part.cmds.invalid_rcpt(0.0) is None
    assert part.cmds.invalid_rcpt(0.0) is Then.NOTHING
    assert part.cmds.envelope.rcpt_blocked
    assert part.feed([b"RCPT TO:<c@example.net>\r\n"]) == [Then.FLUSH]
    assert part.answered() == [replies.TOO_MANY_INVALID]


@pytest.mark.parametrize(
    ("starttls", "verdict"),
    [
        (StartTls.TERMINATE, "accepted"),  # the gateway's own 220
        (StartTls.PASSTHROUGH, "forwarded"),
        (StartTls.STRIP, "refused"),  # hidden: the verb is not allowed
    ],
)
def test_starttls_is_counted_for_the_commands_metric(starttls: StartTls, verdict: str) -> None:
    part = Part(dataclasses.replace(Policy.for_mode(Mode.ESMTP), starttls=starttls))
    part.feed([b"STARTTLS\r\n"])
    assert part.cmds.counts() == {("STARTTLS", verdict): 1}
