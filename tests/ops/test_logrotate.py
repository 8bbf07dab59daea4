"""deploy/logrotate re-opens the protocol log with and without systemd.

Its postrotate script is run here as logrotate runs it (``sh -c``), on a host
without systemd: it signals the pid in ``gateway.pid_file`` and the gateway (main
process and every worker) writes to the new file from then on. When there is no
one to signal, the script fails, so logrotate reports it: nothing is hidden behind
``|| true``. The pid file itself: written by the main process while it serves, a
path that cannot be written is one line before anything listens, removed at exit.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, free_port, run_cli
from tests.reliability.procs import Serve, send_one, until

pytestmark = pytest.mark.timeout(90)

DEPLOY = Path(__file__).parents[2] / "deploy"
PID_FILE = "/run/smtpguard/smtpguard.pid"  # as deploy/smtpguard.toml sets it


def _postrotate() -> str:
    text = (DEPLOY / "logrotate").read_text()
    return text.split("postrotate", 1)[1].split("endscript", 1)[0]


def _without_systemd(pid_file: Path, tmp_path: Path) -> str:
    """The script as on a host without systemd, with the test's pid file."""
    body = _postrotate()
    assert "/run/systemd/system" in body and PID_FILE in body
    return body.replace("/run/systemd/system", str(tmp_path / "no-systemd")).replace(
        PID_FILE, str(pid_file)
    )


def test_the_files_agree_on_the_pid_file_and_hide_no_failure() -> None:
    import tomllib

    cfg = tomllib.loads((DEPLOY / "smtpguard.toml").read_text())
    assert cfg["gateway"]["pid_file"] == PID_FILE
    body = _postrotate()
    assert "|| true" not in body and ">/dev/null" not in body
    # With systemd: the unit's main process, which passes it on to the workers.
    assert "systemctl kill --kill-who=main --signal=USR1 smtpguard.service" in body
    unit = (DEPLOY / "smtpguard.service").read_text()
    assert re.search(r"^RuntimeDirectory=smtpguard$", unit, re.M)  # /run/smtpguard
    assert "/run/smtpguard" in (DEPLOY / "Containerfile").read_text()


def test_postrotate_without_systemd_reopens_the_log_in_every_worker(tmp_path: Path) -> None:
    log = tmp_path / "protocol.log"
    pid_file = tmp_path / "run" / "smtpguard.pid"  # its directory is created
    gw = Serve(
        tmp_path,
        "--maildir",
        str(tmp_path / "m"),
        "--protocol-log",
        str(log),
        "--protocol-log-format",
        "jsonl",
        "--pid-file",
        str(pid_file),
        "--workers",
        "2",
    )
    try:
        assert pid_file.read_text() == f"{gw.proc.pid}\n"
        assert send_one(gw.port).startswith(b"250")
        rotated = tmp_path / "protocol.log.1"
        log.rename(rotated)  # what logrotate does before postrotate
        r = subprocess.run(
            ["sh", "-c", _without_systemd(pid_file, tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        # Each worker says it re-opened the file...
        line = f"re-opened {log}"
        until(lambda: gw.stderr().count(line) == 2, 20, "both workers to re-open")
        # ...and writes there: sessions land in the new file, none in the old one.
        size = rotated.stat().st_size
        for _ in range(8):
            assert send_one(gw.port).startswith(b"250")

        def sessions_in_new_file() -> int:
            lines = log.read_text().splitlines() if log.exists() else []
            return [json.loads(x)["event"] for x in lines].count("disconnect")

        until(lambda: sessions_in_new_file() == 8, 20, "the sessions in the new file")
        assert rotated.stat().st_size == size
    finally:
        assert gw.stop() == 0
    assert not pid_file.exists()  # removed at exit


def test_postrotate_fails_when_there_is_no_gateway_to_signal(tmp_path: Path) -> None:
    missing = tmp_path / "smtpguard.pid"
    r = subprocess.run(
        ["sh", "-c", _without_systemd(missing, tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and str(missing) in r.stderr  # logrotate reports it


def test_an_unwritable_pid_file_is_one_line_before_anything_listens(tmp_path: Path) -> None:
    r = run_cli(
        "serve",
        "--listen",
        f"{LOOPBACK}:{free_port()}",
        "--maildir",
        str(tmp_path / "m"),
        "--pid-file",
        "/proc/nope/smtpguard.pid",
    )
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "/proc/nope/smtpguard.pid: cannot write" in lines[0], r.stderr
    assert "listening on" not in r.stdout
