"""Memory is bounded by open sessions and the dedupe window, not by log size.

A synthetic Postfix log is scanned at 4 MB and at 20 MB (spanning many windows);
the peak of traced allocations must not grow with the size. No timing asserts.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from smtpguard.logscan import synth
from smtpguard.logscan.scan import Options, Scanner
from smtpguard.logscan.source import Source
from smtpguard.logscan.timefmt import parse_duration


def _peak(path: Path, size: int) -> tuple[int, int]:
    with path.open("wb") as out:
        synth.write(out, size, step=10.0, stall_every=700, dup_every=500)
    tracemalloc.start()
    try:
        scanner = Scanner(Options(window=parse_duration("1h")))
        src = Source(str(path))
        scanner.scan(src)
        src.close()
        result = scanner.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result.deliveries


def test_peak_memory_does_not_scale_with_log_size(tmp_path: Path) -> None:
    small_peak, small_n = _peak(tmp_path / "small.log", 4_000_000)
    big_peak, big_n = _peak(tmp_path / "big.log", 20_000_000)
    assert big_n > 4 * small_n  # the big log really has five times the messages
    assert big_peak < small_peak * 1.5 + 2_000_000, (small_peak, big_peak)
    assert big_peak < 40_000_000


def test_synthetic_log_findings_are_found(tmp_path: Path) -> None:
    path = tmp_path / "maillog"
    with path.open("wb") as out:
        synth.write(out, 2_000_000, step=10.0, stall_every=700, dup_every=500)
    scanner = Scanner(Options(window=parse_duration("1h")))
    src = Source(str(path))
    scanner.scan(src)
    src.close()
    result = scanner.finish()
    assert result.counts["stalled_data"] > 0
    assert result.counts["duplicate"] > 0
