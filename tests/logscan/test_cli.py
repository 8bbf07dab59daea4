"""CLI contract: JSON shape, exit codes, gz and stdin, time filters, HTML report."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest

from .conftest import FIXTURES, run_logscan, scan_json


def test_json_has_exactly_the_documented_shape() -> None:
    code, doc = scan_json(str(FIXTURES / "postfix_maillog"))
    assert code == 1
    assert set(doc) == {"findings", "summary"}
    for f in doc["findings"]:
        assert set(f) == {"kind", "file", "line", "time", "peer", "session", "detail"}
        assert isinstance(f["line"], int) and f["detail"]
    assert doc["summary"]["by_kind"]["stalled_data"] == 2


def test_gzip_input_is_read_by_content(tmp_path: Path) -> None:
    gz = tmp_path / "maillog.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "postfix_maillog").read_bytes()))
    _, plain = scan_json(str(FIXTURES / "postfix_maillog"))
    _, packed = scan_json(str(gz))
    assert [f["kind"] for f in packed["findings"]] == [f["kind"] for f in plain["findings"]]


def test_stdin_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    data = (FIXTURES / "ims_kb_article.txt").read_bytes()
    fake = io.TextIOWrapper(io.BufferedReader(io.BytesIO(data)))
    monkeypatch.setattr(sys, "stdin", fake)
    code, doc = scan_json("-")
    assert code == 1
    assert doc["findings"][0]["file"] == "<stdin>"


def test_missing_file_exits_2_but_others_are_scanned(
    capsys: pytest.CaptureFixture[str],
) -> None:
    article = str(FIXTURES / "ims_kb_article.txt")
    code, out = run_logscan("--json", "/nonexistent/maillog", article)
    assert code == 2
    assert "stalled_data" in out
    assert "/nonexistent/maillog" in capsys.readouterr().err


def test_unknown_format_exits_2(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\nthis is not a mail log\n")
    code, _ = run_logscan(str(junk))
    assert code == 2


def test_corrupt_gzip_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "x.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    code, _ = run_logscan(str(bad))
    assert code == 2


@pytest.mark.parametrize("argv", [["--window", "soon"], ["--since", "yesterday"]])
def test_bad_option_values_are_one_line_errors(argv: list[str]) -> None:
    code, _ = run_logscan(*argv, str(FIXTURES / "ims_clean.log"))
    assert code == 2


def test_since_and_until_filter_findings() -> None:
    log = str(FIXTURES / "postfix_maillog")
    _, late = scan_json("--year", "2024", "--since", "2024-02-07T17:15", log)
    assert {f["kind"] for f in late["findings"]} == {"stalled_data", "duplicate"}
    assert all(f["time"] >= "2024-02-07T17:15" for f in late["findings"])
    code, none = scan_json("--year", "2024", "--until", "2024-02-07T16:00", log)
    assert none["findings"] == [] and code == 0


def test_window_shorter_than_the_retry_interval_finds_no_duplicate() -> None:
    _, doc = scan_json("--window", "10m", str(FIXTURES / "postfix_maillog"))
    assert "duplicate" not in {f["kind"] for f in doc["findings"]}


def test_terminal_table_lists_findings() -> None:
    code, out = run_logscan(str(FIXTURES / "ims_kb_article.txt"))
    assert code == 1
    assert "stalled_data" in out and "mail.domain1.com" in out


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    code, _ = run_logscan(
        "--html",
        str(report),
        str(FIXTURES / "postfix_maillog"),
        str(FIXTURES / "ims_mailguard.log"),
    )
    assert code == 1
    html = report.read_text()
    assert "<svg" in html and "<script" not in html
    assert 'src="http' not in html and "<link" not in html  # opens offline
    assert "mail.partner.example[203.0.113.25]" in html
    assert "+30m01s" in html  # the duplicate's copies, with their intervals


@pytest.mark.parametrize("fmt", ["postfix", "ims", "iis", "exchange", "msgtrk", "exim", "zeek"])
def test_binary_garbage_is_nothing_parsed_not_a_clean_bill(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "garbage.bin"
    junk.write_bytes(bytes(range(256)) * 1000)
    code, out = run_logscan("--format", fmt, str(junk))
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing was scanned" in err and "Traceback" not in err
    assert "No findings" not in out and "Inputs" not in out
