"""The shared-rates part alone, without a session: fed findings, held octets and
the driver's counts, it returns the checks to send and what each answer decides."""

from __future__ import annotations

import pytest

from smtpguard.core.actions import RateCheck
from smtpguard.core.checks import Finding
from smtpguard.core.pipeline import Slot
from smtpguard.core.policy import Verdict
from smtpguard.core.ratelimit import Decision, SharedRates

F = Finding("mail_rate", "SG-CHK-RATE", "too fast", Verdict.RATE_LIMIT, b"450 slow\r\n", 5, 60.0)
S = Finding("sender_length", "SG-CHK-SL", "long", Verdict.RATE_LIMIT, b"550 no\r\n", 1, 60.0)
TAIL = b"body\r\n.\r\n"


def part() -> SharedRates:
    return SharedRates(("::ffff:192.0.2.7", 2525))


def test_a_held_command_is_asked_once_and_forwarded_or_refused() -> None:
    for allowed, decision in ((True, Decision.FORWARD), (None, Decision.FORWARD),
                              (False, Decision.REFUSE)):  # fmt: skip
        r = part()
        slot = Slot("MAIL")
        ask = r.hold_command(F, slot, "MAIL", b"MAIL FROM:<a@b>\r\n", "", "a@b")
        assert ask == RateCheck("mail_rate", "mail_rate:client:192.0.2.7", 5, 60.0)
        assert r.hold_command(F, Slot("RCPT"), "RCPT", b"RCPT TO:<c@d>\r\n", "", None) is None
        count = r.answer(allowed)
        assert count is not None and count.slot is slot and count.decision is decision
        assert r.waiting and r.next_check() is not None


def test_per_sender_checks_key_on_the_hashed_sender() -> None:
    ask = part().hold_command(S, Slot("MAIL"), "MAIL", b"", "", "A@Example.ORG")
    assert ask is not None and ask.key.startswith("sender_length:sender:")
    assert "xample" not in ask.key


def test_a_count_after_a_reply_blocks_or_not() -> None:
    r = part()
    assert r.count_after(F) is not None
    count = r.answer(False)
    assert count is not None and count.decision is Decision.BLOCK and not r.waiting
    r.count_after(F)
    count = r.answer(True)
    assert count is not None and count.decision is Decision.NOTHING
    assert r.answer(True) is None  # nothing queued: nothing decided


@pytest.mark.parametrize("cut", [None, 1])
def test_the_dot_is_held_whatever_the_cut_and_released_after_the_last_count(
    cut: int | None,
) -> None:
    r = part()
    chunks = [TAIL] if cut is None else [TAIL[i : i + 1] for i in range(len(TAIL))]
    # The relay hands the part only the chunk holding the end of data.
    sent = b"".join(chunks[:-1]) + bytes(r.hold_dot(chunks[-1]))
    assert sent + r.held == TAIL and 1 <= len(r.held) <= 3
    slot = Slot(".")
    assert r.hold_message(slot, [F, F]) is not None
    first = r.answer(True)
    assert first is not None and first.decision is Decision.NOTHING
    last = r.answer(True)
    assert last is not None and last.decision is Decision.RELEASE
    assert sent + last.held == TAIL and r.held == b""


def test_over_the_limit_the_message_is_refused_and_its_other_counts_dropped() -> None:
    r = part()
    r.hold_dot(TAIL)
    r.hold_message(Slot("."), [F, F])
    count = r.answer(False)
    assert count is not None and count.decision is Decision.REFUSE_MESSAGE
    assert not r.waiting and r.held == b""


def test_clear_forgets_every_count() -> None:
    r = part()
    r.count_after(F)
    r.clear()
    assert not r.waiting and r.next_check() is None
