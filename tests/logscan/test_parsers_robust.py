"""Parsers never raise on arbitrary input and agree whatever the line endings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.logscan import formats
from smtpguard.logscan.formats import Context
from smtpguard.logscan.sessions import SessionTracker

from .conftest import FIXTURES, scan_json

NAMES = sorted(formats.registry())


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=30))
def test_parser_and_tracker_survive_garbage(name: str, lines: list[bytes]) -> None:
    module = formats.registry()[name]
    tracker = SessionTracker("x")
    for ev in module.parse(enumerate(lines, 1), Context("x")):
        list(tracker.feed(ev))
    list(tracker.close())


@pytest.mark.parametrize("name", NAMES)
@given(st.lists(st.binary(max_size=120), max_size=20))
def test_sniff_never_raises(name: str, lines: list[bytes]) -> None:
    formats.registry()[name].sniff(lines)


@pytest.mark.parametrize(
    "fixture",
    [
        "ims_mailguard.log",
        "postfix_maillog",
        "exchange_RECV20240207-1.LOG",
        "iis_ex240207.log",
        "exim_mainlog",
        "zeek_smtp.log",
    ],
)
def test_crlf_line_endings_give_the_same_findings(tmp_path, fixture: str) -> None:
    crlf = tmp_path / fixture
    crlf.write_bytes((FIXTURES / fixture).read_bytes().replace(b"\n", b"\r\n"))
    _, a = scan_json(str(FIXTURES / fixture))
    _, b = scan_json(str(crlf))
    assert [(f["kind"], f["line"]) for f in a["findings"]] == [
        (f["kind"], f["line"]) for f in b["findings"]
    ]


def test_ims_continuation_lines_only_after_a_non_final_reply() -> None:
    module = formats.registry()["ims"]
    raw = [
        b"2/7/01 5:01:20 PM : A connection was accepted from a.example\n",
        b"2/7/01 5:01:20 PM : >>> 220-*********\n",
        b"  220 ****0****\n",
        b"500 Unrecognized command\n",  # prose: the previous reply line was final
    ]
    events = list(module.parse(enumerate(raw, 1), Context("x")))
    assert [type(e).__name__ for e in events] == ["Connect", "ServerReply", "ServerReply"]


def test_non_ascii_digits_are_not_numbers() -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: a status or size written
    with such a digit is not a number, and no parser raises on it (issue 23)."""
    head = (FIXTURES / "iis_clean.log").read_bytes().splitlines()[:4]
    row = (
        "2024-02-08 09:12:41 198.51.100.7 h SMTPSVC1 EXCH01 192.0.2.25 0 DATA - <x@y> "
        "²5⁰ 0 133 ¹8 205 SMTP - - - -"
    ).encode()
    events = list(formats.registry()["iis"].parse(enumerate([*head, row], 1), Context("x")))
    assert all(getattr(e, "size", 0) != 18 for e in events)
