"""Prometheus /metrics after real traffic, one and two workers: counters match."""

from __future__ import annotations

import re
import smtplib
import time
import urllib.request
from pathlib import Path

import pytest

from tests.peers import (
    LOOPBACK,
    GatewayProcess,
    SmtpSink,
    free_port,
    run_cli,
    smtp_source,
    wait_port,
)

pytestmark = pytest.mark.e2e


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_what_was_sent(tmp_path: Path, workers: int) -> None:
    sink = SmtpSink(tmp_path)
    mport = free_port()
    gw = GatewayProcess(
        "--upstream",
        sink.address,
        "--workers",
        str(workers),
        "--metrics-listen",
        f"{LOOPBACK}:{mport}",
        workdir=tmp_path,
    )
    try:
        # With workers the endpoint starts once they are forked: the SMTP port may
        # take connections before it listens.
        wait_port(mport, gw.proc)
        smtp_source(gw.address, 5, 50, 500)
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            text = _scrape(mport)
            if _value(text, "smtpguard_messages_total", 'result="relayed"') >= 50:
                break
            time.sleep(0.1)
        assert _value(text, "smtpguard_messages_total", 'result="relayed"') == 50
        assert _value(text, "smtpguard_commands_total", 'verb="MAIL",verdict="forwarded"') == 50
        assert _value(text, "smtpguard_commands_total", 'verb="HELO",verdict="forwarded"') == 50
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=10) as s:  # EHLO and VRFY: refused
            s.ehlo_or_helo_if_needed()
            s.verify("root")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = _scrape(mport)
            if _value(text, "smtpguard_policy_events_total", 'id="SG-CMD-BLOCKED"') >= 2:
                break
            time.sleep(0.1)
        assert _value(text, "smtpguard_policy_events_total", 'id="SG-CMD-BLOCKED"') == 2
        assert _value(text, "smtpguard_commands_total", 'verb="VRFY",verdict="refused"') == 1
        # + the readiness probe's connection
        assert _value(text, "smtpguard_sessions_total") >= 50
        assert _value(text, "smtpguard_sessions_open") == 0
        assert _value(text, "smtpguard_message_bytes_total") > 50 * 500
        assert "smtpguard_reply_latency_seconds_bucket" in text
    finally:
        gw.stop()
        sink.stop()


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.create_server((LOOPBACK, 0)) as busy:
        port = busy.getsockname()[1]
        r = run_cli(
            "serve",
            "--listen",
            f"{LOOPBACK}:{free_port()}",
            "--metrics-listen",
            f"{LOOPBACK}:{port}",
            cwd=tmp_path,
        )
    assert r.returncode == 2 and "--metrics-listen" in r.stderr and "Traceback" not in r.stderr
