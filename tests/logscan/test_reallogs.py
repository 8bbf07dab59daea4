"""Every file of ../shared/reallogs (third-party logs, see its SOURCES.md) read right.

For each file: the format auto-detection picks, the lines read and understood, the
SMTP sessions and the message copies the log shows, and the findings by kind — what
a careful reading of the file itself finds (the reasons are in the comments). A few
findings are pinned further (peer, time, the words of the detail). The files are not
copied into the repository: without ../shared these tests skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import scan_json

REALLOGS = Path(__file__).resolve().parents[3] / "shared" / "reallogs"
pytestmark = pytest.mark.skipif(
    not REALLOGS.is_dir(), reason="../shared/reallogs (third-party logs) is not beside the repo"
)

# file: (format, lines, lines understood, sessions, messages, findings by kind)
# Lines not understood are the annotations around excerpts (fail2ban's "# failJSON"
# comments, the Exim test harness's "******** SERVER ********"); other programs' lines
# in a maillog (amavis, dovecot, postgrey…) are counted apart.
EXPECTED: dict[str, tuple[str, int, int, int, int, dict[str, int]]] = {
    "exchange/artefacts-help-MSGTRKMS2022091915-1.LOG": ("msgtrk", 7, 7, 1, 1, {}),
    "exchange/artefacts-help-RECV2023011116-1.LOG": ("exchange", 21, 21, 1, 0, {}),
    "exchange/elastic-integrations-messagetracking.log": ("msgtrk", 6, 6, 5, 2, {}),
    "exchange/elastic-integrations-smtpreceive.log": ("exchange", 4, 4, 2, 0, {}),
    "exchange/elastic-integrations-smtpsend.log": ("exchange", 3, 3, 2, 0, {}),
    "exchange/msqa-162632-hub-smtpreceive.log": ("exchange", 19, 19, 1, 1, {}),
    "exchange/tstrueber-blog-smtpreceive-relay.log": ("exchange", 14, 14, 1, 1, {}),
    "exim/exim-testsuite-0092.log": ("exim", 9, 9, 6, 0, {}),  # test_formats_24_exim
    "exim/exim-testsuite-0562.log": ("exim", 15, 14, 4, 0, {"stalled_data": 1}),
    "exim/exim-testsuite-0615.log": ("exim", 329, 328, 0, 81, {}),
    "exim/exim-testsuite-0623.log": ("exim", 20, 20, 0, 0, {"stalled_data": 1}),
    "exim/exim-testsuite-0900.log": ("exim", 19, 18, 12, 9, {"stalled_data": 3}),
    "exim/fail2ban-exim-spam.log": ("exim", 26, 9, 0, 0, {}),
    "exim/fail2ban-exim.log": ("exim", 128, 66, 19, 0, {}),
    "iis/hinshelwood-blog-iis7-smtpsvc.log": ("iis", 25, 25, 3, 1, {}),
    "iis/ossec-docs-exchange2000-w3c.log": ("iis", 41, 41, 10, 5, {"pix_rewrite": 5}),
    "ims/techtarget-2002-ims-protocol-log.log": ("ims", 11, 11, 1, 0, {}),
    "postfix/credicard-relay-doc-pix.log": ("postfix", 9, 9, 1, 2, {"pix_workaround": 1}),
    "postfix/digineo-postfix-exporter.log": ("postfix", 53, 53, 2, 3, {}),
    "postfix/fail2ban-postfix.log": ("postfix", 203, 115, 0, 0, {}),
    "postfix/hardware-mailserver-issue195-tiscali.log": (
        "postfix",
        6,
        6,
        0,
        6,
        {"duplicate": 2, "stalled_data": 6},
    ),
    "postfix/inqueue-ecs-pipeline.log": ("postfix", 20, 20, 1, 2, {}),
    "postfix/modoboa-koalabs.log": ("postfix", 519, 331, 36, 20, {}),
    "postfix/pixelpark-helga-head2000.log": ("postfix", 2000, 1992, 204, 18, {}),
    "postfix/ubuntuforums-2008-none-greylist-lost-after-data.log": ("postfix", 54, 49, 6, 0, {}),
    "postfix/ubuntuforums-2008-vivaubuntu-pix.log": ("postfix", 8, 8, 0, 1, {"pix_workaround": 1}),
    "postfix/ubuntuforums-2010-vserver1-timeout-after-data.log": (
        "postfix",
        5,
        4,
        1,
        0,
        {"stalled_data": 1},
    ),
    "postfix/whyscream-grok-pr181-lines.log": ("postfix", 10, 10, 0, 0, {}),
    "zeek/elastic-integrations-zeek-test-smtp.json": ("zeek", 2, 2, 1, 0, {}),
    "zeek/zed-wrccdc2018-smtp.json": ("zeek", 1188, 1188, 1188, 0, {}),
    "zeek/zed-wrccdc2018-smtp.log": ("zeek", 1197, 1197, 1188, 0, {}),
    "zeek/zeek-btest-basic-smtp.log": ("zeek", 11, 11, 2, 2, {}),
    "zeek/zeek-btest-mail-transactions-invalid-smtp.log": ("zeek", 14, 14, 1, 2, {}),
    "zeek/zeek-btest-one-side-smtp.log": ("zeek", 12, 12, 1, 0, {}),
    "zeek/zeek-btest-starttls-smtp.log": ("zeek", 11, 11, 1, 0, {}),
}
YEAR = {"postfix/modoboa-koalabs.log": "2017"}  # SOURCES.md: scan it with --year 2017


def _scan(name: str) -> tuple[int, dict]:
    year = ("--year", YEAR[name]) if name in YEAR else ()
    return scan_json(*year, str(REALLOGS / name))


def test_the_table_covers_every_file() -> None:
    files = {str(p.relative_to(REALLOGS)) for p in REALLOGS.glob("*/*")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_file_reads_as_expected(name: str) -> None:
    fmt, lines, understood, sessions, messages, kinds = EXPECTED[name]
    code, doc = _scan(name)
    (f,) = doc["summary"]["files"]
    assert doc["summary"]["errors"] == []
    assert (f["format"], f["lines"], f["lines_understood"]) == (fmt, lines, understood)
    assert (f["sessions"], f["messages"]) == (sessions, messages)
    assert doc["summary"]["by_kind"] == kinds
    assert code == (1 if kinds else 0)
    fmts = doc["summary"]["formats"][fmt]
    assert (fmts["lines_read"], fmts["lines_understood"]) == (lines, understood)


def _findings(name: str, kind: str) -> list[dict]:
    return [f for f in _scan(name)[1]["findings"] if f["kind"] == kind]


def test_exim_498_connection_id_stalls() -> None:
    # 1 "SMTP data timeout" and 2 "SMTP connection Ci=p124x from … lost while reading
    # message data"; the 9 arrivals are from loopback, so none is indexed for duplicates.
    stalls = _findings("exim/exim-testsuite-0900.log", "stalled_data")
    assert [f["line"] for f in stalls] == [9, 10, 11]
    assert {f["peer"] for f in stalls} == {"(tester) [127.0.0.1]"}


def test_exim_client_side_stall_is_the_closed_connection_not_the_451() -> None:
    (stall,) = _findings("exim/exim-testsuite-0623.log", "stalled_data")
    assert stall["line"] == 18 and stall["session"] == "10HmbB-000000005vi-0000"
    assert "never answered our end of data" in stall["detail"]


def test_exim_log_without_arrivals_is_detected_and_its_stall_found() -> None:
    (stall,) = _findings("exim/exim-testsuite-0562.log", "stalled_data")
    assert stall["peer"] == "(abcd) [127.0.0.1]" and stall["line"] == 4


def test_iis_pix_rewrite_per_session_of_the_ossec_sample() -> None:
    found = _findings("iis/ossec-docs-exchange2000-w3c.log", "pix_rewrite")
    assert [f["peer"] for f in found] == [
        "24.95.255.99",
        "70.114.247.230",
        "24.174.89.177",
        "80.64.22.8",
        "72.185.9.146",
    ]
    assert all("'XXXX'" in f["detail"] and "500" in f["detail"] for f in found)


def test_postfix_stall_with_byte_count() -> None:
    (stall,) = _findings(
        "postfix/ubuntuforums-2010-vserver1-timeout-after-data.log", "stalled_data"
    )
    assert stall["peer"] == "mail-pw0-f53.google.com[209.85.160.53]"
    assert "before any message data arrived (0 bytes)" in stall["detail"]


def test_tiscali_retries_pasted_newest_first_are_duplicates_in_time_order() -> None:
    dups = _findings("postfix/hardware-mailserver-issue195-tiscali.log", "duplicate")
    assert [d["time"] for d in dups] == ["2017-11-20T22:23:33.775480", "2017-11-22T05:28:36.568513"]
    first, second = (d["detail"] for d in dups)
    assert first.startswith("Queue file 84FC51F660C to xxx.xxxx@tiscali.it ")
    assert "from <" not in first  # the sender is unknown, not the null sender
    assert "(+1h09m59s)" in first and "-" not in first.split(":", 1)[1].split("(")[1][:1]
    assert "3 times" in second and "(+1h10m00s)" in second and "regular" in second


def test_pix_workaround_lines() -> None:
    (p,) = _findings("postfix/ubuntuforums-2008-vivaubuntu-pix.log", "pix_workaround")
    assert p["peer"] == "xxx.edu[10.22.9.15]:25"
    assert "disable_esmtp (it greets with HELO" in p["detail"]
    assert "delay_dotcrlf (it waits before the final CRLF.CRLF" in p["detail"]
    (p,) = _findings("postfix/credicard-relay-doc-pix.log", "pix_workaround")
    assert p["peer"] == "10.136.0.90[10.136.0.90]:25"
    assert "disable_esmtp (" in p["detail"] and "delay_dotcrlf" not in p["detail"]
