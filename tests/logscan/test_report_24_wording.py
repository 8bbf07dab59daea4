"""Issue 24: findings say only what the log proves, and every report table lists a
stall before the duplicate (attempts, copies) that begins with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtpguard.logscan.formats import Context, postfix
from smtpguard.logscan.model import Flag, Kind

from .conftest import run_logscan

PIX = (
    b"Feb 18 10:00:00 mx postfix/smtp[7]: 3F2A1B: enabling PIX workarounds: "
    b"disable_esmtp delay_dotcrlf for xxx.edu[10.22.9.15]:25\n"
)


def _flags(lines: list[bytes]) -> list[Flag]:
    events = postfix.parse(enumerate(lines, 1), Context("x", year=2008))
    return [e for e in events if isinstance(e, Flag)]


def test_pix_workaround_names_each_work_around_the_log_shows() -> None:
    (f,) = _flags([PIX])
    assert f.kind is Kind.PIX_WORKAROUND
    assert f.detail.startswith(
        "queue 3F2A1B: Postfix turned on PIX work-arounds for xxx.edu[10.22.9.15]:25: "
        "disable_esmtp (it greets with HELO, not EHLO"
    )
    assert "; delay_dotcrlf (it waits before the final CRLF.CRLF of a message queued" in (f.detail)
    # Not claimed: that every message now waits, or that the banner surely was masked.
    assert "each message" not in f.detail
    assert "smtp_pix_workaround_maps" in f.detail
    (only,) = _flags([PIX.replace(b" delay_dotcrlf", b"")])
    assert "disable_esmtp (" in only.detail and "delay_dotcrlf" not in only.detail


def test_an_unknown_work_around_is_named_as_logged() -> None:
    (f,) = _flags([PIX.replace(b"delay_dotcrlf", b"future_thing")])
    assert "; future_thing. Postfix does so" in f.detail


def test_a_zero_byte_loss_says_354_and_nothing_more() -> None:
    (f,) = _flags(
        [
            b"Oct  8 10:00:00 mx postfix/smtpd[9]: lost connection after DATA (0 bytes) "
            b"from unknown[192.0.2.7]\n"
        ]
    )
    assert f.detail == (
        "the connection was lost after smtpd answered DATA with 354 and before any "
        "message data arrived (0 bytes); the log shows nothing more"
    )
    assert "Mailguard" not in f.detail


def test_a_loss_with_bytes_names_the_missing_end_of_data() -> None:
    (f,) = _flags(
        [
            b"Oct  8 10:00:00 mx postfix/smtpd[9]: timeout after DATA (4,096 bytes) from "
            b"a[192.0.2.7]\n".replace(b"4,096", b"4096")
        ]
    )
    assert f.detail.startswith("the connection timed out in the DATA phase, after 4,096 bytes")
    assert "end of data (CRLF.CRLF) never arrived" in f.detail


# Three attempts of one queue file, each ending without a reply to the end of data:
# three stalls, and one duplicate whose first copy is the first attempt (same time).
RETRIES = "".join(
    f"Nov 20 {t} mx postfix/smtp[{pid}]: 84FC51F660C: to=<x@t.example>, "
    f"relay=etb[192.0.2.5]:25, delay=1, status=deferred (lost connection with "
    f"etb[192.0.2.5] while sending end of data -- message may be sent more than once)\n"
    for t, pid in (("22:23:33", 1), ("23:13:34", 2), ("23:33:33", 3))
)


def test_text_report_lists_the_stall_before_the_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one table row per line
    log = tmp_path / "maillog"
    log.write_text(RETRIES)
    code, out = run_logscan("--year", "2017", str(log))
    assert code == 1
    kinds_table, findings_table = out.split("Findings by kind and peer", 1)[1].split(
        "\nFindings", 1
    )
    # The kinds table: stalled_data first.
    assert re.findall(r"│ (stalled_data|duplicate) ", kinds_table) == ["stalled_data", "duplicate"]
    rows = re.findall(r"│ (2017-\S+ \S+) │ (stalled_data|duplicate) ", findings_table)
    assert rows == [
        ("2017-11-20 22:23:33", "stalled_data"),
        ("2017-11-20 22:23:33", "duplicate"),
        ("2017-11-20 23:13:34", "stalled_data"),
        ("2017-11-20 23:33:33", "stalled_data"),
    ]


def test_html_report_lists_the_stall_before_the_duplicate(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    log.write_text(RETRIES)
    html = tmp_path / "r.html"
    run_logscan("--year", "2017", "--html", str(html), str(log))
    doc = html.read_text()
    counts = re.findall(r"<li><b>(\w+)</b>", doc)
    assert counts == ["stalled_data", "duplicate"]
    rows = re.findall(r"<tr><td>(2017-[^<]+)</td><td>(\w+)</td>", doc)
    assert rows == [
        ("2017-11-20 22:23:33", "stalled_data"),
        ("2017-11-20 22:23:33", "duplicate"),
        ("2017-11-20 23:13:34", "stalled_data"),
        ("2017-11-20 23:33:33", "stalled_data"),
    ]
