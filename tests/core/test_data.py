"""DataScanner: exact CRLF.CRLF detection and framing checks under every split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.core.data import DataScanner


def scan_all(stream: bytes, cuts: list[int]) -> tuple[int, int, str]:
    """Feed ``stream`` cut at ``cuts``; return (end offset, first bad offset, reason)."""
    sc = DataScanner()
    bad, reason = -1, ""
    for a, b in itertools.pairwise([0, *sorted(set(cuts)), len(stream)]):
        chunk = stream[a:b]
        if not chunk:
            continue
        r = sc.scan(chunk)
        if bad < 0 and r.invalid_at >= 0:
            bad, reason = a + r.invalid_at, r.reason
            if r.invalid_at == 0 and stream[a - 1 : a] == b"\r" and stream[a : a + 1] != b"\n":
                bad -= 1  # the bare CR ended the previous chunk
        if r.end >= 0:
            return a + r.end, bad, reason
    return -1, bad, reason


MESSAGES = [
    (b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n", 24, -1),
    (b".\r\nNOOP\r\n", 3, -1),
    (b"..\r\n.\r\n", 7, -1),
    (b"a\r\n.x\r\n.\r\n", 10, -1),
    (b"a\n.\nb\r\n.\r\n", 10, 1),
    (b"a\r\n.\n\r\n.\r\n", 10, 4),
    (b"a\r.\r\r\n.\r\n", 9, 1),
    (b"a\x00\r\n.\r\n", 7, 1),
    (b"\r\n.\r\n", 5, -1),
    (b"abc", -1, -1),
]


@pytest.mark.parametrize(("stream", "end", "bad"), MESSAGES)
def test_every_one_and_two_cut_split(stream: bytes, end: int, bad: int) -> None:
    n = len(stream)
    for i in range(n + 1):
        for j in range(i, n + 1):
            got_end, got_bad, _ = scan_all(stream, [i, j])
            assert (got_end, got_bad) == (end, bad), (i, j)
    assert scan_all(stream, list(range(n)))[:2] == (end, bad)


@given(st.binary(max_size=60), st.lists(st.integers(0, 60), max_size=20))
def test_segmentation_never_changes_the_result(stream: bytes, cuts: list[int]) -> None:
    assert scan_all(stream, cuts) == scan_all(stream, [])


@given(st.binary(max_size=60))
def test_end_is_the_first_crlf_dot_crlf_at_a_line_start(stream: bytes) -> None:
    end, _, _ = scan_all(stream, [])
    expected = (b"\r\n" + stream).find(b"\r\n.\r\n")
    assert end == (-1 if expected < 0 else expected + 3)


def test_reasons_are_named() -> None:
    assert scan_all(b"a\nb", [])[2] == "bare LF"
    assert scan_all(b"a\rb", [])[2] == "bare CR"
    assert scan_all(b"a\x00b", [])[2] == "NUL"
    assert scan_all(b"a\r", []) == (-1, -1, "")  # may still become CRLF
    assert scan_all(b"a\r", [2]) == (-1, -1, "")


def test_size_counts_message_octets_only() -> None:
    sc = DataScanner()
    sc.scan(b"abc\r\n")
    sc.scan(b".\r\nQUIT\r\n")
    assert sc.size == 8
