"""Detection rules and the duplicate index, with hypothesis where it helps."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from smtpguard.logscan import rules
from smtpguard.logscan.dedupe import DuplicateIndex
from smtpguard.logscan.model import Delivered
from smtpguard.logscan.timefmt import human_delta, parse_duration

T0 = datetime(2024, 2, 7, 17, 0, 0)


@given(st.text(alphabet="20 *", min_size=1, max_size=80))
def test_any_banner_of_pix_characters_is_masked(text: str) -> None:
    assert rules.is_masked_banner(["220 " + text])
    assert rules.pix_greeting(["220 " + text])


def test_article_banner_is_masked_and_generic_banners_are_not() -> None:
    assert rules.is_masked_banner(["220 *********0**********************", "****2*****"])
    assert rules.pix_greeting(["220"])  # Postfix's rule: the code alone passes
    assert not rules.pix_greeting(["220-****", "220 ****"])  # Postfix reads the '-'
    assert rules.is_masked_banner(["220-*****", "220 ****"])  # still masked in part
    assert not rules.is_masked_banner(["220 mx.example.net ESMTP"])
    assert not rules.is_masked_banner(["220 mx.example.net ESMTP Postfix (Debian/GNU)"])
    assert rules.is_masked_banner(["220 mx.example.net *********** ESMTP"])


def test_strip_port() -> None:
    assert rules.strip_port("192.0.2.1:41234") == "192.0.2.1"
    assert rules.strip_port("[2001:db8::1]:25") == "2001:db8::1"
    assert rules.strip_port("2001:db8::1") == "2001:db8::1"
    assert rules.strip_port("mail.example") == "mail.example"


def test_durations() -> None:
    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert human_delta(timedelta(minutes=30, seconds=1)) == "+30m01s"


def _copy(minutes: float, **kw: object) -> Delivered:
    base: dict[str, object] = {
        "line": int(minutes) + 1,
        "time": T0 + timedelta(minutes=minutes),
        "session": "s",
        "peer": "mx.sender.example",
        "message_id": "m1@x",
        "rcpt_to": ("a@b",),
    }
    base.update(kw)
    return Delivered(**base)  # type: ignore[arg-type]


def _run(index: DuplicateIndex, copies: list[Delivered]) -> list:
    out = []
    for c in copies:
        out += list(index.add("log", c))
    return out + list(index.close())


def test_copies_within_the_window_are_one_finding_listing_all() -> None:
    found = _run(DuplicateIndex(timedelta(hours=2)), [_copy(0), _copy(30), _copy(60)])
    assert len(found) == 1
    assert len(found[0].copies) == 3
    assert "3 times" in found[0].detail and "regular" in found[0].detail


def test_copies_further_apart_than_the_window_are_not_duplicates() -> None:
    assert _run(DuplicateIndex(timedelta(minutes=10)), [_copy(0), _copy(30)]) == []


def test_same_message_id_to_other_recipients_is_not_a_duplicate() -> None:
    copies = [_copy(0, rcpt_to=("a@b",)), _copy(1, rcpt_to=("c@d",))]
    assert _run(DuplicateIndex(), copies) == []


def test_envelope_without_size_needs_a_stalled_copy() -> None:
    plain = [_copy(0, message_id="", mail_from="s@x"), _copy(5, message_id="", mail_from="s@x")]
    assert _run(DuplicateIndex(), plain) == []
    stalled = [
        _copy(0, message_id="", mail_from="s@x", stalled=True),
        _copy(5, message_id="", mail_from="s@x"),
    ]
    (f,) = _run(DuplicateIndex(), stalled)
    assert "without a final reply" in f.detail


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=300))
def test_index_never_exceeds_its_cap(minutes: list[int]) -> None:
    index = DuplicateIndex(timedelta(days=30), max_groups=16)
    for i, m in enumerate(sorted(minutes)):
        list(index.add("log", _copy(m, message_id=f"id{i % 40}@x")))
        assert index.size <= 16


@given(st.lists(st.integers(min_value=0, max_value=600), min_size=2, max_size=50))
def test_every_copy_is_counted_once(minutes: list[int]) -> None:
    found = _run(DuplicateIndex(timedelta(days=1)), [_copy(m) for m in sorted(minutes)])
    assert len(found) == 1
    assert f"{len(minutes)} times" in found[0].detail
