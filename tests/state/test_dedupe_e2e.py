"""Duplicate suppression end to end with the embedded store: ``serve --workers 2``
in front of smtp-sink; a re-sent copy is answered from the store, the server gets
the message once, the JSONL log has the event and ``logscan`` shows the copy."""

from __future__ import annotations

import contextlib
import json
import re
import smtplib
import sqlite3
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess, SmtpSink, run_cli

pytestmark = pytest.mark.e2e

BODY = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: once\r\n\r\nhello\r\n"


def send(port: int, rcpts: list[str], body: bytes = BODY) -> tuple[int, bytes]:
    with smtplib.SMTP(LOOPBACK, port, timeout=20) as s:
        s.helo("client.example.org")
        s.mail("a@example.org")
        for r in rcpts:
            s.rcpt(r)
        reply = s.data(body)
        s.quit()
    return reply


def wait_recorded(database: Path, timeout: float = 15.0) -> None:
    """Until the embedded store holds an accepted message's record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if database.exists():
            uri = f"file:{database}?mode=ro"
            with (
                contextlib.closing(sqlite3.connect(uri, uri=True)) as db,
                contextlib.suppress(sqlite3.OperationalError),  # no table yet
            ):
                if db.execute("SELECT count(*) FROM kv").fetchone()[0]:
                    return
        time.sleep(0.05)
    raise AssertionError(f"no record in {database} after {timeout} s")


def test_resent_copy_is_answered_from_the_store_and_logscan_shows_it(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    log = tmp_path / "gw.jsonl"
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[gateway]\nupstream = "{sink.address}"\n'
        f'[protocol_log]\npath = "{log}"\nformat = "jsonl"\n'
        '[state]\ndirectory = "state"\ntimeout = 10\n[dedupe]\nenabled = true\nwindow = 3600\n'
    )
    gw = GatewayProcess("--config", str(cfg), "--workers", "2", workdir=tmp_path)
    try:
        # smtp-sink names no queue ID: copies are answered with the key's first digits
        assert send(gw.port, ["b@example.net", "c@example.net"]) == (250, b"2.0.0 Ok")
        # The record is written as the 250 goes to the client, not before it (no delay
        # on the final reply): a sender's retry comes long after, so wait until it is in.
        wait_recorded(tmp_path / "state" / "state.sqlite3")
        # Four more copies over new sessions (both workers), recipients in any order.
        orders = (["c@example.net", "b@example.net"], ["b@example.net", "c@example.net"]) * 2
        answers = {send(gw.port, rcpts) for rcpts in orders}
        assert len(answers) == 1
        code, text = answers.pop()
        assert code == 250 and re.fullmatch(rb"2\.0\.0 Already accepted as [0-9a-f]{16}", text)
        # Another envelope or another body is another message.
        assert send(gw.port, ["b@example.net"])[1].startswith(b"2.0.0 Ok")
        assert send(gw.port, ["b@example.net"], BODY + b"more\r\n")[1].startswith(b"2.0.0 Ok")
        deadline = time.monotonic() + 10
        while len(sink.messages()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert len(sink.messages()) == 3
    finally:
        gw.stop()
        sink.stop()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    suppressed = [e for e in events if e.get("id") == "SG-DEDUPE-SUPPRESSED"]
    assert len(suppressed) == 4
    scan = run_cli("logscan", "--json", str(log))
    doc = json.loads(scan.stdout)
    assert doc["summary"]["by_kind"].get("suppressed_copy") == 4, scan.stdout[-2000:]
    assert doc["summary"]["by_kind"].get("duplicate", 0) == 0


def test_store_directory_unusable_is_one_line_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[state]\ndirectory = "file/state"\n[dedupe]\nenabled = true\n')
    r = run_cli("serve", "--config", str(cfg), "--listen", f"{LOOPBACK}:0", cwd=tmp_path)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0] == (
        f'smtpguard serve: error: {cfg}:2: state.directory = "{tmp_path}/file/state": '
        f"{tmp_path}/file is not a directory"
    )
    assert "Traceback" not in r.stderr
