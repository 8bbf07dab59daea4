"""The lines of ``serve``'s own life follow ``log_format``, and SIGUSR1 says what it
re-opened.

With ``log_format = "json"`` every line the process writes, on stdout (the start-up
block) and stderr (draining, stopped, reloads, re-opened logs), is one JSON object
with its ``event`` ID (docs/events.md); in text they stay the short lines a
terminal shows. Real ``smtpguard serve`` processes, signalled as an operator or a
service manager does.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.procs import Serve, send_one, until

pytestmark = pytest.mark.timeout(90)


def _objects(text: str) -> list[dict[str, Any]]:
    """Every line as JSON (a line that is not fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _events(gw: Serve, event: str) -> list[dict[str, Any]]:
    return [o for o in _objects(gw.stderr()) if o.get("event") == event]


def test_json_lifecycle_lines_from_start_to_stop(tmp_path: Path) -> None:
    plog = tmp_path / "protocol.log"
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        "[gateway]\n"
        f'maildir = "{tmp_path / "m"}"\n'
        'log_format = "json"\n'
        'log_level = "warning"\n'
        "[protocol_log]\n"
        f'path = "{plog}"\n'
    )
    gw = Serve(tmp_path, "--config", str(cfg), "--workers", "2", wait=False)
    try:
        until(lambda: "SG-GATEWAY-STARTED" in gw.stdout(), 20, "the start-up object")
        [started] = _objects(gw.stdout())
        assert started["event"] == "SG-GATEWAY-STARTED" and started["level"] == "info"
        assert started["listen"] == gw.address
        assert started["config"].startswith(str(cfg))
        assert started["protocol_log"].startswith(str(plog))
        assert started["message"].startswith("smtpguard ") and "gateway" in started["message"]
        assert send_one(gw.port).startswith(b"250")

        gw.signal(signal.SIGUSR1)
        until(lambda: len(_events(gw, "SG-LOG-REOPENED")) == 2, 20, "both workers' lines")
        reopened = _events(gw, "SG-LOG-REOPENED")
        assert {o["pid"] for o in reopened} == set(gw.children()[:2])
        assert all(o["files"] == [str(plog)] and o["signal"] == "SIGUSR1" for o in reopened)

        gw.signal(signal.SIGHUP)
        until(lambda: len(_events(gw, "SG-CONFIG-RELOADED")) == 2, 20, "both workers reload")
        hup = [o for o in _events(gw, "SG-LOG-REOPENED") if o["signal"] == "SIGHUP"]
        assert len(hup) == 2
    finally:
        assert gw.stop() == 0
    stderr = _objects(gw.stderr())  # every line is JSON
    assert [o["event"] for o in stderr[-2:]] == ["SG-GATEWAY-DRAINING", "SG-GATEWAY-STOPPED"]
    assert stderr[-1]["message"] == "stopped" and stderr[-1]["logger"] == "smtpguard.lifecycle"
    assert len(_objects(gw.stdout())) == 1  # stdout: the start-up object only


def test_json_reload_refused_carries_its_id(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gateway]\nmaildir = "{tmp_path / "m"}"\nlog_format = "json"\n')
    gw = Serve(tmp_path, "--config", str(cfg), "--workers", "1", wait=False)
    try:
        until(lambda: "SG-GATEWAY-STARTED" in gw.stdout(), 20, "the start-up object")
        cfg.write_text(cfg.read_text() + "mode = 3\n")
        gw.signal(signal.SIGHUP)
        until(lambda: _events(gw, "SG-CONFIG-REFUSED"), 20, "the refusal")
        [refused] = _events(gw, "SG-CONFIG-REFUSED")
        assert refused["level"] == "error" and "mode" in refused["message"]
    finally:
        assert gw.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_says_what_it_reopened_in_text(workers: str, tmp_path: Path) -> None:
    plog = tmp_path / "protocol.log"
    gw = Serve(
        tmp_path,
        "--maildir",
        str(tmp_path / "m"),
        "--protocol-log",
        str(plog),
        "--workers",
        workers,
    )
    try:
        gw.signal(signal.SIGUSR1)
        line = f"re-opened {plog}"
        until(lambda: gw.stderr().count(line) == int(workers), 20, "a line per worker")
        pids = gw.children()[: int(workers)] if workers != "1" else [gw.proc.pid]
        for pid in pids:
            assert f"smtpguard: SIGUSR1 (pid {pid}): re-opened {plog}" in gw.stderr()
    finally:
        assert gw.stop() == 0


def test_sigusr1_without_a_log_file_says_so(tmp_path: Path) -> None:
    gw = Serve(tmp_path, "--maildir", str(tmp_path / "m"), "--workers", "1")
    try:
        gw.signal(signal.SIGUSR1)
        until(lambda: "SIGUSR1" in gw.stderr(), 20, "the line")
        assert "no log file to re-open" in gw.stderr()
    finally:
        assert gw.stop() == 0


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_killed_worker_and_its_restart_carry_their_ids(fmt: str, tmp_path: Path) -> None:
    """SIGKILL to one of two workers: the supervisor's line says which worker died
    and why with ``SG-WORKER-EXITED``, the fork that replaces it says its new pid with
    ``SG-WORKER-RESTARTED``, and the new worker serves."""
    args = ("--maildir", str(tmp_path / "m"), "--workers", "2", "--log-format", fmt)
    gw = Serve(tmp_path, *args, wait=False)
    try:
        until(lambda: "SG-GATEWAY-STARTED" in gw.stdout() or "stop with" in gw.stdout(), 20)
        workers = gw.children()[:2]  # the mailbox is forked after the workers
        killed = workers[0]
        os.kill(killed, signal.SIGKILL)
        until(lambda: "SG-WORKER-RESTARTED" in gw.stderr(), 20, "the restart line")
        alive = gw.children()
        assert killed not in alive
        if fmt == "json":
            [exited] = _events(gw, "SG-WORKER-EXITED")
            assert exited["level"] == "error" and exited["logger"] == "smtpguard.gateway"
            assert exited["worker_pid"] == killed and exited["pid"] == gw.proc.pid
            assert exited["reason"] == "killed by SIGKILL" and exited["restart_in"] == 1
            name = exited["worker"]
            assert exited["message"] == (
                f"SG-WORKER-EXITED {name} killed by SIGKILL; restarting it in 1 s"
            )
            [restarted] = _events(gw, "SG-WORKER-RESTARTED")
            assert restarted["level"] == "warning" and restarted["worker"] == name
            new = restarted["worker_pid"]
            assert restarted["message"] == f"SG-WORKER-RESTARTED {name} restarted (pid {new})"
        else:
            [exited] = [ln for ln in gw.stderr().splitlines() if "SG-WORKER-EXITED" in ln]
            assert " ERROR smtpguard.gateway: SG-WORKER-EXITED worker " in exited
            assert "killed by SIGKILL; restarting it in 1 s event=SG-WORKER-EXITED" in exited
            assert f"worker_pid={killed} reason=killed by SIGKILL restart_in=1.0" in exited
            [restarted] = [ln for ln in gw.stderr().splitlines() if "SG-WORKER-RESTARTED" in ln]
            assert " WARNING smtpguard.gateway: SG-WORKER-RESTARTED worker " in restarted
            new = int(restarted.split("worker_pid=")[1].split()[0])
            assert f"restarted (pid {new}) event=SG-WORKER-RESTARTED" in restarted
        assert new != killed and new in alive  # the worker came back, as a new process
        until(lambda: len(gw.children()) == 3, 20, "both workers and the mailbox")
        for _ in range(6):  # mail goes through with the restarted worker in the pool
            assert send_one(gw.port).startswith(b"250")
    finally:
        assert gw.stop() == 0
