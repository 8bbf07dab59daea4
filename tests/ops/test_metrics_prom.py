"""PrometheusMetrics across forked workers, scraped over loopback HTTP, no CLI.

tests/ops/metrics_workers.py forks two workers the way ``serve`` does; the totals
on ``/metrics`` must be the sum of both, the open-sessions gauge must count only
live workers, and counters must survive a worker's exit.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard.gateway import metrics_prom

ROOT = Path(__file__).parents[2]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    m = re.search(r"^" + pattern + r" (\S+)$", text, re.M)
    assert m is not None, f"{name}{{{labels}}} not in:\n{text}"
    return float(m.group(1))


@pytest.fixture
def workers() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ops.metrics_workers"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()  # bounded: the helper exits on any failure
    try:
        assert line.startswith("port "), line
        yield proc, int(line.split()[1])
    finally:
        proc.stdin.close()
        assert proc.wait(30) == 0


def test_totals_add_up_across_two_workers(workers: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = workers
    text = _scrape(port)
    # A: 3 opened, 2 closed (2 relayed + 1 refused each); B: 2 opened and closed.
    assert _value(text, "smtpguard_sessions_total") == 5
    assert _value(text, "smtpguard_sessions_open") == 1  # A's third session
    assert _value(text, "smtpguard_messages_total", 'result="relayed"') == 2 * 2 + 2 * 1
    assert _value(text, "smtpguard_messages_total", 'result="refused"') == 2
    assert _value(text, "smtpguard_message_bytes_total") == 2 * 1000 + 2 * 500
    assert _value(text, "smtpguard_commands_total", 'verb="MAIL",verdict="forwarded"') == 8
    assert _value(text, "smtpguard_commands_total", 'verb="HELO",verdict="forwarded"') == 4
    assert _value(text, "smtpguard_commands_total", 'verb="VRFY",verdict="refused"') == 4
    assert _value(text, "smtpguard_commands_total", 'verb="OTHER",verdict="refused"') == 4
    assert "X-EVIL-VERB" not in text
    assert _value(text, "smtpguard_policy_events_total", 'id="SG-CMD-BLOCKED"') == 2
    assert _value(text, "smtpguard_upstream_errors_total", 'kind="connect"') == 1
    assert _value(text, "smtpguard_sessions_refused_total", 'reason="max-sessions"') == 1
    assert _value(text, "smtpguard_reply_latency_seconds_count") == 2
    assert _value(text, "smtpguard_reply_latency_seconds_bucket", 'le="0.0025"') == 1
    assert _value(text, "smtpguard_reply_latency_seconds_bucket", 'le="+Inf"') == 2

    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("exit-a\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "a-exited"
    after = _scrape(port)
    assert _value(after, "smtpguard_sessions_open") == 0  # a dead worker's gauge is gone
    assert _value(after, "smtpguard_sessions_total") == 5  # counters are kept
    assert _value(after, "smtpguard_messages_total", 'result="relayed"') == 6


def test_metrics_off_without_a_listen_address() -> None:
    assert metrics_prom.setup_metrics(None, workers=4) is None


@pytest.mark.parametrize("bad", ["9125", "host:port", "127.0.0.1:70000", ""])
def test_listen_address_errors_name_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics_prom.parse_listen(bad)


def test_listen_address_forms() -> None:
    assert metrics_prom.parse_listen("[::1]:9125") == ("::1", 9125)
    assert metrics_prom.parse_listen(":9125") == ("127.0.0.1", 9125)
    assert metrics_prom.parse_listen("0.0.0.0:9125") == ("0.0.0.0", 9125)


def test_counts_are_published_at_flush_and_match_observe() -> None:
    # Hooks only count; flush() publishes: nothing before, exactly observe()'s
    # buckets, count and sum after (tests/ops/metrics_batch.py).
    r = subprocess.run(
        [sys.executable, "-m", "tests.ops.metrics_batch"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
