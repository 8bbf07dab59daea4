"""``serve --dedupe`` and where the embedded store lives: made only when a feature
needs it, in the per-user state directory (or the configured one), never in the
working directory, and not at all when start-up fails."""

from __future__ import annotations

import os
import re
import smtplib
import time
from pathlib import Path

import pytest

from smtpguard.state import SYSTEM_DIRECTORY, default_directory
from tests.peers import LOOPBACK, free_port, run_cli, sink_and_gateway

pytestmark = pytest.mark.e2e

BODY = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: again\r\n\r\nthe same\r\n"


def send(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP(LOOPBACK, port, timeout=20) as s:
        s.helo("client.example.org")
        s.mail("a@example.org")
        s.rcpt("b@example.net")
        reply = s.data(BODY)
        s.quit()
    return reply


def wait_for(count: int, messages: object) -> None:
    deadline = time.monotonic() + 10
    while len(messages()) < count and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_the_default_directory_is_per_user_and_never_the_working_directory() -> None:
    home = {"HOME": "/home/ann"}
    assert default_directory(home, 1000) == "/home/ann/.local/state/smtpguard"
    assert default_directory({**home, "XDG_STATE_HOME": "/xdg"}, 1000) == "/xdg/smtpguard"
    # A relative XDG_STATE_HOME is invalid (XDG base directory spec): ignored.
    assert default_directory({**home, "XDG_STATE_HOME": "rel"}, 1000).startswith("/home/ann/")
    assert default_directory(home, 0) == SYSTEM_DIRECTORY == "/var/lib/smtpguard"
    # systemd's StateDirectory= (deploy/smtpguard.service) wins.
    unit = {**home, "XDG_STATE_HOME": "/xdg", "STATE_DIRECTORY": "/var/lib/smtpguard"}
    assert default_directory(unit, 998) == "/var/lib/smtpguard"


def test_without_a_feature_that_needs_it_no_store_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_home, work = tmp_path / "state-home", tmp_path / "cwd"
    work.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    with sink_and_gateway(work, sinkdir=tmp_path) as (sink, gw):
        assert send(gw.port) == (250, b"2.0.0 Ok")
        assert send(gw.port) == (250, b"2.0.0 Ok")  # no dedupe: both relayed
        wait_for(2, sink.messages)
        assert len(sink.messages()) == 2
    assert not state_home.exists()
    assert os.listdir(work) == []


def test_dedupe_flag_suppresses_a_resent_copy_with_the_store_in_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_home, work = tmp_path / "state-home", tmp_path / "cwd"
    work.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    with sink_and_gateway(work, "--dedupe", "--dedupe-window", "600", sinkdir=tmp_path) as (
        sink,
        gw,
    ):
        block = gw.startup_block()
        assert send(gw.port) == (250, b"2.0.0 Ok")
        code, text = send(gw.port)  # the sender re-sends: answered, not relayed
        wait_for(1, sink.messages)
        time.sleep(0.2)
        delivered = len(sink.messages())
    assert code == 250 and re.fullmatch(rb"2\.0\.0 Already accepted as [0-9a-f]{16}", text), text
    assert delivered == 1
    database = state_home / "smtpguard" / "state.sqlite3"
    assert f"shared state  local {database}: dedupe (600s window)" in block, block
    assert database.exists()
    assert os.listdir(work) == []


def test_no_store_is_made_when_start_up_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_home = tmp_path / "state-home"
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    dead = f"{LOOPBACK}:{free_port()}"  # nothing listens there
    r = run_cli(
        "serve", "--dedupe", "--upstream", dead, "--listen", f"{LOOPBACK}:0", cwd=tmp_path
    )  # fmt: skip
    assert r.returncode == 2 and "not reachable" in r.stderr, r.stderr
    assert f"--upstream {dead}: not reachable" in r.stderr
    assert sorted(os.listdir(tmp_path)) == []
