"""Issue 24: the HTML time axis from minutes to years, and the --year hint for
stamps without a year."""

from __future__ import annotations

import itertools
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from smtpguard.logscan.model import Finding, Kind
from smtpguard.logscan.report_html import CHAR_W, PLOT_W, ticks, timeline_svg
from smtpguard.logscan.timefmt import year_hint

from .conftest import run_logscan

LO = datetime(2023, 3, 14, 10, 3, 7)


@pytest.mark.parametrize(
    ("span", "step"),
    [
        (timedelta(minutes=2), timedelta(seconds=15)),
        (timedelta(hours=3), timedelta(minutes=15)),
        (timedelta(days=5), timedelta(days=1)),
        (timedelta(days=92), timedelta(days=14)),
        (timedelta(days=4 * 365), None),  # calendar months: every 6th
    ],
)
def test_ticks_are_few_readable_and_evenly_stepped(span: timedelta, step: timedelta | None) -> None:
    got = ticks(LO, LO + span)
    assert 4 <= len(got) <= 12, got
    times = [t for t, _ in got]
    labels = [label for _, label in got]
    assert len(set(labels)) == len(labels)  # no two ticks read alike
    assert all(LO <= t <= LO + span for t in times)
    # They fit side by side: every label's width within its share of the plot.
    assert len(labels) * (CHAR_W * max(map(len, labels)) + 12) <= PLOT_W
    if step is not None:
        assert {b - a for a, b in itertools.pairwise(times)} == {step}
    else:
        assert labels == [
            "2023-07",
            "2024-01",
            "2024-07",
            "2025-01",
            "2025-07",
            "2026-01",
            "2026-07",
            "2027-01",
        ]


def test_a_forty_year_axis_steps_in_years() -> None:
    labels = [label for _, label in ticks(LO, LO + timedelta(days=40 * 366))]
    assert labels == ["2025", "2030", "2035", "2040", "2045", "2050", "2055", "2060"]


def _finding(t: datetime) -> Finding:
    return Finding(Kind.STALLED_DATA, "f", 1, t, "peer", "s", "d")


def test_a_timeline_over_four_years_draws_a_bounded_axis() -> None:
    # Before: 2-day steps at most, so four years drew ~730 labels (a black bar).
    svg = timeline_svg([_finding(LO), _finding(LO + timedelta(days=4 * 365))])
    labels = re.findall(r'text-anchor="middle">([^<]+)</text>', svg)
    assert 4 <= len(labels) <= 12, labels
    assert re.search(r">2023-\d\d-\d\d to 2027-\d\d-\d\d<", svg)  # the padded span


NOW = datetime(2025, 6, 1, 12, 0)


def test_year_hint_without_year() -> None:
    hint = year_hint("maillog", datetime(2025, 2, 7, 17, 1), None, NOW)
    assert hint is not None
    assert hint.startswith("maillog: its syslog stamps carry no year; they were read as ")
    assert "pass --year YYYY" in hint
    assert year_hint("maillog", None, None, NOW) is None  # stamps with years


def test_year_hint_says_why_the_guess_looks_wrong() -> None:
    future = year_hint("maillog", datetime(2025, 11, 16, 14, 41), None, NOW)
    assert future is not None and "the latest, 2025-11-16 14:41, is in the future" in future
    old_file = year_hint(
        "maillog", datetime(2025, 3, 14, 10, 0), None, NOW, modified=datetime(2023, 3, 15)
    )
    assert old_file is not None
    assert "is after the file was last modified (2023-03-15 00:00)" in old_file


def test_year_hint_with_year_only_when_it_looks_wrong() -> None:
    assert year_hint("maillog", datetime(2017, 11, 16), 2017, NOW) is None
    hint = year_hint("maillog", datetime(2027, 11, 16), 2027, NOW)
    assert hint is not None and "--year 2027" in hint and "in the future" in hint


def test_the_cli_prints_the_hint(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    log.write_text(
        "Nov 16 11:00:01 mx postfix/smtpd[1]: connect from a.example[192.0.2.1]\n"
        "Nov 16 11:00:02 mx postfix/smtpd[1]: disconnect from a.example[192.0.2.1]\n"
    )
    old = datetime(2017, 11, 16, 12, 0).timestamp()
    os.utime(log, (old, old))  # the file was last written in 2017
    _, out = run_logscan(str(log))
    out = " ".join(out.split())  # rich wraps at the terminal's width
    assert "carry no year" in out and "--year YYYY" in out
    assert "after the file was last modified (2017-11-16 12:00)" in out
    _, out = run_logscan("--year", "2017", str(log))
    assert "carry no year" not in out
    rfc3339 = tmp_path / "maillog3339"
    rfc3339.write_text(
        "2017-11-16T11:00:01+01:00 mx postfix/smtpd[1]: connect from a.example[192.0.2.1]\n"
    )
    _, out = run_logscan(str(rfc3339))
    assert "carry no year" not in out
