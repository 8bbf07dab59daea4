"""The duplicates part alone, without a session: fed the accepted envelope, the
message bytes and the store's answer, it returns what should happen."""

from __future__ import annotations

import pytest

from smtpguard.core.dedupe import DedupeLookup, DedupeRecord
from smtpguard.core.duplicates import Duplicates, Release, Suppress
from smtpguard.core.grammar import Reply
from smtpguard.core.pipeline import Slot

BODY = b"Subject: x\r\n\r\nhello\r\n.\r\n"


def ready(named: bool = True) -> Duplicates:
    d = Duplicates(named)
    d.tracker.mail_accepted(b"MAIL FROM:<a@example.org>\r\n")
    d.tracker.rcpt_accepted(b"RCPT TO:<b@example.net>\r\n")
    d.tracker.data_started()
    return d


def feed(d: Duplicates, chunks: list[bytes]) -> bytes:
    """Feed the message in ``chunks``, the last one through hold(): what is relayed."""
    sent = b""
    for chunk in chunks[:-1]:
        d.tracker.feed(chunk)
        sent += chunk
    d.tracker.feed(chunks[-1])
    return sent + bytes(d.tracker.hold(chunks[-1]))


def reply(code: int, text: str) -> Reply:
    return Reply(code, (text,), f"{code} {text}\r\n".encode())


def cuts(data: bytes) -> list[list[bytes]]:
    """Whole, one byte at a time."""
    return [[data], [data[i : i + 1] for i in range(len(data))]]


@pytest.mark.parametrize("chunks", cuts(BODY))
def test_the_dot_is_held_and_a_miss_releases_it(chunks: list[bytes]) -> None:
    d = ready()
    sent = feed(d, chunks)
    slot = Slot(".")
    ask = d.lookup(slot)
    assert isinstance(ask, DedupeLookup) and d.waiting
    decision = d.answer(None)
    assert isinstance(decision, Release) and decision.slot is slot
    assert sent + decision.held == BODY and not d.waiting
    record = d.accepted(reply(250, "2.0.0 Ok: queued as 4ABC123"))
    assert record == DedupeRecord(ask.key, "4ABC123")


def test_the_same_message_gives_the_same_key_whatever_the_cut() -> None:
    keys = set()
    for chunks in cuts(BODY):
        d = ready()
        feed(d, chunks)
        ask = d.lookup(Slot("."))
        assert isinstance(ask, DedupeLookup)
        keys.add(ask.key)
    assert len(keys) == 1


@pytest.mark.parametrize("named", [True, False])
def test_a_hit_is_suppressed_with_the_configured_reply(named: bool) -> None:
    d = ready(named)
    feed(d, [BODY])
    slot = Slot(".")
    d.lookup(slot)
    decision = d.answer("4ABC123")
    assert isinstance(decision, Suppress) and decision.slot is slot
    assert (b"4ABC123" in decision.reply) is named
    assert d.accepted(reply(250, "ok")) is None  # nothing sent: nothing recorded


def test_no_envelope_no_lookup_and_the_held_octets_go_at_once() -> None:
    d = Duplicates(True)
    d.tracker.data_started()
    sent = feed(d, [BODY])
    ask = d.lookup(Slot("."))
    assert ask == b".\r\n" and sent + ask == BODY


def test_a_stale_answer_decides_nothing_and_a_refusal_records_nothing() -> None:
    d = ready()
    assert d.answer(None) is None
    feed(d, [BODY])
    d.lookup(Slot("."))
    d.answer(None)
    assert d.accepted(reply(554, "no")) is None


def test_trailing_data_after_the_dot_is_not_the_parts_business() -> None:
    # The relay hands it only the message's own bytes: what follows the dot in the
    # same chunk never reaches hold() (tests/core/test_part_relay.py).
    d = ready()
    assert bytes(d.tracker.hold(b"x\r\n.\r\n")) == b"x\r\n"
    assert d.tracker.held == b".\r\n"
