"""``serve --workers 2`` with the embedded store: the ``rate-limit`` action of a check
admits exactly ``rate`` events per client address across sessions spread over both
workers (it used to count per session), for a RCPT check (the command is held for
the count) and for a content check (the final dot is held); a reload that adds one
shares it when a store is open, and says it counts per session when none is.

Clients bind to 127.0.0.4-8 so that the readiness probe (from 127.0.0.1)
never counts against them; all are loopback.
"""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path

import pytest

from tests.gateway.test_serve_config import Serve
from tests.peers import LOOPBACK, GatewayProcess, SmtpSink

pytestmark = pytest.mark.e2e

SESSIONS = 16  # SO_REUSEPORT spreads them over both workers (checked below)


def serve(tmp_path: Path, sink: SmtpSink, checks: str) -> GatewayProcess:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[gateway]\nupstream = "{sink.address}"\nlog_format = "json"\nlog_level = "info"\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\ntimeout = 10\n{checks}'
    )
    return GatewayProcess("--config", str(cfg), "--workers", "2", workdir=tmp_path)


def worker_pids(output: str, client: str) -> set[int]:
    """The workers that logged a finished session of ``client``."""
    pids = set()
    for line in output.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if str(obj.get("peer", "")).startswith(client + ":") and "session" in obj:
            pids.add(int(obj["pid"]))
    return pids


def test_a_rcpt_rate_limit_is_exact_across_two_workers(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    gw = serve(
        tmp_path,
        sink,
        '[checks.recipient_domains]\naction = "rate-limit"\npatterns = ["^example\\\\.net$"]\n'
        "rate = 3\nperiod = 3600.0\n",
    )
    client = "127.0.0.4"
    try:
        codes = []
        for _ in range(SESSIONS):
            with smtplib.SMTP(LOOPBACK, gw.port, timeout=20, source_address=(client, 0)) as s:
                s.helo("client.example.org")
                s.mail("a@example.org")
                ok = s.rcpt("b@example.net")[0]  # allowed: no finding, no count
                code, text = s.rcpt("x@elsewhere.test")  # relaying: counted
                assert ok == 250
                codes.append(code)
                if code != 250:
                    assert text == b"5.7.1 Relay access denied"
                s.quit()
        assert codes.count(250) == 3, codes
        assert codes[:3] == [250] * 3 and codes.count(550) == SESSIONS - 3
    finally:
        _, out = gw.stop()
        sink.stop()
    assert len(worker_pids(out, client)) == 2, out[-3000:]


def test_a_content_rate_limit_holds_the_dot_exactly_across_two_workers(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    gw = serve(
        tmp_path,
        sink,
        '[checks.to_cc_count]\naction = "rate-limit"\nlimit = 1\nrate = 2\nperiod = 3600.0\n',
    )
    client = "127.0.0.5"
    body = b"From: a@example.org\r\nTo: b@example.net, c@example.net\r\nSubject: two\r\n\r\nhi\r\n"
    try:
        codes = []
        for _ in range(SESSIONS):
            with smtplib.SMTP(LOOPBACK, gw.port, timeout=20, source_address=(client, 0)) as s:
                s.helo("client.example.org")
                s.mail("a@example.org")
                s.rcpt("b@example.net")
                code, text = s.data(body)
                codes.append(code)
                if code != 250:
                    assert text == b"5.6.0 Message refused: too many To/Cc addresses"
                s.quit()
        assert codes.count(250) == 2 and codes.count(554) == SESSIONS - 2, codes
        deadline = time.monotonic() + 10
        while len(sink.messages()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert len(sink.messages()) == 2  # the refused ones never reached the server
    finally:
        _, out = gw.stop()
        sink.stop()
    assert len(worker_pids(out, client)) == 2, out[-3000:]


RELAYING = (
    '[checks.recipient_domains]\naction = "rate-limit"\npatterns = ["^example\\\\.net$"]\n'
    "rate = 2\nperiod = 3600.0\n"
)


def relay_codes(port: int, client: str, sessions: int) -> list[int]:
    codes = []
    for _ in range(sessions):
        with smtplib.SMTP(LOOPBACK, port, timeout=20, source_address=(client, 0)) as s:
            s.helo("client.example.org")
            s.mail("a@example.org")
            codes.append(s.rcpt("x@elsewhere.test")[0])
            s.quit()
    return codes


def test_a_rate_limit_added_by_a_reload_is_shared_when_a_store_is_open(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    base = (
        f'[gateway]\nupstream = "{sink.address}"\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\ntimeout = 10\n[dedupe]\nenabled = true\n'
    )
    cfg = tmp_path / "gw.toml"
    cfg.write_text(base)
    g = Serve(cfg, "--workers", "2")
    try:
        assert relay_codes(g.port, "127.0.0.6", 3) == [250] * 3  # no rate-limit yet
        g.reload(base + RELAYING, "SG-CONFIG-RELOADED", workers=2)
        codes = relay_codes(g.port, "127.0.0.7", SESSIONS)
        assert codes == [250] * 2 + [550] * (SESSIONS - 2), codes
    finally:
        g.stop()
        sink.stop()


def test_a_reload_that_adds_a_rate_limit_without_a_store_says_so(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    base = f'[gateway]\nupstream = "{sink.address}"\n'
    cfg = tmp_path / "gw.toml"
    cfg.write_text(base)
    g = Serve(cfg)
    try:
        hits = g.reload(base + RELAYING, "need a restart")
        assert "a rate-limit check (counts per session" in hits[0]
        # Per session, as before: each session's one relaying RCPT passes.
        assert relay_codes(g.port, "127.0.0.8", 3) == [250] * 3
    finally:
        g.stop()
        sink.stop()
