"""Every format: the planted stall and duplicate are found; the clean log is silent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from .conftest import FIXTURES, scan_json

PLANTED = {
    "ims_mailguard.log": ("ims", {"stalled_data": 1, "duplicate": 1}),
    "smtpguard_gateway_ims.log": ("ims", {"masked_banner": 1, "ehlo_rejected": 1}),
    "iis_ex240207.log": (
        "iis",
        {"stalled_data": 1, "duplicate": 1, "masked_banner": 1, "ehlo_rejected": 1},
    ),
    "exchange_RECV20240207-1.LOG": ("exchange", {"stalled_data": 1, "duplicate": 1}),
    "exchange_SEND20240207-1.LOG": (
        "exchange",
        {"stalled_data": 1, "masked_banner": 1, "ehlo_rejected": 1},
    ),
    "postfix_maillog": ("postfix", {"stalled_data": 2, "duplicate": 1, "pix_workaround": 1}),
    "exim_mainlog": ("exim", {"stalled_data": 2, "duplicate": 1}),
    "zeek_smtp.log": ("zeek", {"stalled_data": 1, "duplicate": 1}),
    "zeek_smtp.json": ("zeek", {"stalled_data": 1, "duplicate": 1}),
    "smtpguard.jsonl": ("jsonl", {"stalled_data": 1, "duplicate": 1}),
}
CLEAN = {
    "ims_clean.log": "ims",
    "iis_clean.log": "iis",
    "exchange_clean.LOG": "exchange",
    "postfix_clean.log": "postfix",
    "exim_clean.log": "exim",
    "zeek_clean.log": "zeek",
    "smtpguard_clean.jsonl": "jsonl",
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_findings_are_found_with_auto_detection(name: str) -> None:
    fmt, expected = PLANTED[name]
    code, doc = scan_json(str(FIXTURES / name))
    assert code == 1
    assert doc["summary"]["files"][0]["format"] == fmt
    assert Counter(f["kind"] for f in doc["findings"]) == Counter(expected)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_forced_format_gives_the_same_findings(name: str) -> None:
    fmt, expected = PLANTED[name]
    _, doc = scan_json("--format", fmt, str(FIXTURES / name))
    assert Counter(f["kind"] for f in doc["findings"]) == Counter(expected)


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean_log_has_no_findings(name: str) -> None:
    code, doc = scan_json(str(FIXTURES / name))
    assert doc["findings"] == []
    assert code == 0
    assert doc["summary"]["files"][0]["format"] == CLEAN[name]


def test_every_format_has_a_planted_stall_a_duplicate_and_a_clean_log() -> None:
    formats_with_stall = {fmt for fmt, exp in PLANTED.values() if exp.get("stalled_data")}
    formats_with_dup = {fmt for fmt, exp in PLANTED.values() if exp.get("duplicate")}
    every = {"ims", "iis", "exchange", "postfix", "exim", "zeek", "jsonl"}
    assert formats_with_stall == every
    assert formats_with_dup == every
    assert set(CLEAN.values()) == every
    assert all((FIXTURES / n).exists() for n in [*PLANTED, *CLEAN])


def test_duplicate_lists_every_copy_and_the_intervals() -> None:
    _, doc = scan_json(str(FIXTURES / "postfix_maillog"))
    (dup,) = [f for f in doc["findings"] if f["kind"] == "duplicate"]
    assert "invoice-4711@partner.example" in dup["detail"]
    assert "3 times" in dup["detail"]
    assert dup["detail"].count("postfix_maillog:") == 3
    assert "(+30m01s)" in dup["detail"] and "(+30m02s)" in dup["detail"]
    assert "regular" in dup["detail"]
    assert dup["peer"] == "mail.partner.example[203.0.113.25]"


def test_stall_finding_names_peer_time_and_session() -> None:
    _, doc = scan_json(str(FIXTURES / "exchange_RECV20240207-1.LOG"))
    (stall,) = [f for f in doc["findings"] if f["kind"] == "stalled_data"]
    assert stall["peer"] == "192.0.2.10"
    assert stall["session"] == "08DC27F1A2B3C002"
    assert stall["time"] == "2024-02-07T17:01:23.121000"
    assert stall["line"] == 33
    assert "354" in stall["detail"]


def test_sending_side_stall_is_described_as_such() -> None:
    _, doc = scan_json(str(FIXTURES / "exchange_SEND20240207-1.LOG"))
    (stall,) = [f for f in doc["findings"] if f["kind"] == "stalled_data"]
    assert "remote server never gave a final reply" in stall["detail"]


def test_duplicates_are_found_across_rotated_files(tmp_path: Path) -> None:
    lines = (FIXTURES / "postfix_maillog").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if "17:40:42" in line)
    (tmp_path / "maillog.1").write_text("".join(lines[:cut]))
    (tmp_path / "maillog").write_text("".join(lines[cut:]))
    _, doc = scan_json(str(tmp_path / "maillog.1"), str(tmp_path / "maillog"))
    (dup,) = [f for f in doc["findings"] if f["kind"] == "duplicate"]
    assert "/maillog.1:13" in dup["detail"] and "/maillog:1" in dup["detail"]


def test_loopback_reinjection_is_not_a_duplicate() -> None:
    _, doc = scan_json(str(FIXTURES / "postfix_clean.log"))
    assert doc["summary"]["deliveries"] >= 1
    assert doc["findings"] == []
