"""The gateway process never dies silently, never hangs, and stops cleanly.

Each test reproduces one failure of the process around the core: start-up errors
reported in one line before the start-up block, a worker that dies being logged and
restarted, the built-in mailbox outliving the workers (drain works the same in every
topology), a second instance refused, and SIGHUP/SIGUSR1 acting on smtpguard's own
log level and on the protocol log after a rotation.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, SmtpSink, free_port, run_cli
from tests.reliability.procs import Client, Serve, send_one, until

pytestmark = pytest.mark.timeout(90)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_unwritable_protocol_log_is_one_line_before_the_start_up_block(
    workers: str, tmp_path: Path
) -> None:
    r = run_cli(
        "serve",
        "--listen",
        f"{LOOPBACK}:{free_port()}",
        "--maildir",
        str(tmp_path / "m"),
        "--protocol-log",
        "/nonexistent/dir/x.log",
        "--workers",
        workers,
    )
    assert r.returncode == 2
    assert "/nonexistent/dir/x.log" in _one_line(r.stderr)
    assert "listening on" not in r.stdout


@pytest.mark.parametrize("workers", ["0", "1"])
def test_unusable_maildir_is_one_line_not_a_silent_port(workers: str) -> None:
    r = run_cli(
        "serve",
        "--listen",
        f"{LOOPBACK}:{free_port()}",
        "--maildir",
        "/proc/nope",
        "--workers",
        workers,
    )
    assert r.returncode == 2
    assert "/proc/nope" in _one_line(r.stderr)
    assert "listening on" not in r.stdout


def test_a_worker_that_fails_at_start_stops_the_service_in_one_line(tmp_path: Path) -> None:
    """A failure the checks before forking cannot see (here: injected)."""
    script = textwrap.dedent(
        """
        import sys
        from smtpguard.gateway import workers as w
        socks = w.bind_listeners("127.0.0.1", 0, 2, 16)
        def main(ready):
            raise FileNotFoundError(2, "No such file or directory", "/var/x")
        ok = lambda ready: (ready(), __import__("time").sleep(60))
        kids = [w.Child("worker 0", ok, [socks[0]]), w.Child("worker 1", main, [socks[1]])]
        try:
            w.run_workers(kids, socks)
        except w.StartupFailed as exc:
            print(exc, file=sys.stderr)
            sys.exit(1)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert _one_line(r.stderr) == "worker 1: /var/x: No such file or directory"


def test_a_child_dying_over_and_over_stops_the_service(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, sys, time
        from smtpguard.gateway import workers as w
        w.MAX_BACKOFF = 0.05
        first = [True]
        def main(ready):
            ready()
            time.sleep(0.1)
            os._exit(3)
        sock = w.bind_listeners("127.0.0.1", 0, 1, 16)
        sys.exit(w.run_workers([w.Child("worker 0", main, sock)], sock))
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.count("worker 0 exited with status 3; restarting it") == 4
    assert "exited with status 3, 5 times in a row: stopping the service" in r.stderr


def test_a_killed_worker_is_logged_and_restarted(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    try:
        gw = Serve(tmp_path, "--upstream", sink.address, "--workers", "2")
        try:
            kids = gw.children()
            assert len(kids) == 2
            signal_pid = kids[0]
            import os

            os.kill(signal_pid, signal.SIGKILL)
            until(lambda: "restarted (pid" in gw.stderr(), 20, "restart")
            assert "worker 0 killed by SIGKILL; restarting it in 1 s" in gw.stderr()
            assert len(gw.children()) == 2 and signal_pid not in gw.children()
            for _ in range(10):
                assert send_one(gw.port).startswith(b"250")
        finally:
            assert gw.stop() == 0
    finally:
        sink.stop()


def test_built_in_mailbox_outlives_a_worker(tmp_path: Path) -> None:
    """Worker 0 used to host the mailbox: killing it stopped all delivery."""
    import os

    gw = Serve(tmp_path, "--maildir", str(tmp_path / "m"), "--workers", "2")
    try:
        workers = gw.children()[:2]  # the mailbox is forked after the workers
        os.kill(workers[0], signal.SIGKILL)
        until(lambda: "restarted (pid" in gw.stderr(), 20, "restart")
        for _ in range(6):
            assert send_one(gw.port).startswith(b"250")
    finally:
        assert gw.stop() == 0
    assert len(list((tmp_path / "m" / "new").iterdir())) == 6


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_with_built_in_mailbox_lets_every_transaction_finish(
    workers: str, tmp_path: Path
) -> None:
    gw = Serve(
        tmp_path, "--maildir", str(tmp_path / "m"), "--workers", workers, "--drain-grace", "60"
    )
    clients = [Client(gw.port) for _ in range(8)]  # spread over the workers
    for c in clients:
        c.transaction_open()
    gw.ctrl_c()  # SIGINT to the whole process group, as a terminal does
    until(lambda: "draining" in gw.stderr(), 10, "drain to start")
    for c in clients:
        assert c.cmd(b"DATA").startswith(b"354")
        c.sock.sendall(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        assert c.reply().startswith(b"250"), gw.stderr()
        assert c.cmd(b"NOOP").startswith(b"421 4.3.2")
        c.close()
    # Well inside the 60 s grace: nothing waits for a transaction that cannot finish.
    assert gw.proc.wait(20) == 0
    assert len(list((tmp_path / "m" / "new").iterdir())) == 8
    err = gw.stderr()
    assert err.count("smtpguard: draining sessions...") == 1
    assert err.rstrip().endswith("smtpguard: stopped")
    assert [ln for ln in err.splitlines() if "draining" in ln] == [
        "smtpguard: draining sessions..."
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_instance_on_the_same_address_refuses_to_start(
    workers: str, tmp_path: Path
) -> None:
    sink = SmtpSink(tmp_path)
    try:
        first = Serve(tmp_path, "--upstream", sink.address, "--workers", "2")
        try:
            r = run_cli(
                "serve",
                "--listen",
                first.address,
                "--upstream",
                sink.address,
                "--workers",
                workers,
            )
            assert r.returncode == 2
            assert "cannot listen" in _one_line(r.stderr)
            assert "listening on" not in r.stdout
        finally:
            assert first.stop() == 0
    finally:
        sink.stop()


def _config(path: Path, upstream: str, level: str) -> None:
    path.write_text(f'[gateway]\nupstream = "{upstream}"\nlog_level = "{level}"\n')


def test_sighup_changes_smtpguard_log_level(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    cfg = tmp_path / "g.toml"
    _config(cfg, sink.address, "warning")
    try:
        gw = Serve(tmp_path, "--config", str(cfg), "--workers", "2")
        try:
            c = Client(gw.port)
            assert c.reply().startswith(b"220")
            assert c.cmd(b"VRFY someone").startswith(b"500")  # logged at info
            c.close()
            _config(cfg, sink.address, "info")
            gw.signal(signal.SIGHUP)
            until(lambda: "configuration reloaded" in gw.stderr(), 10, "reload")
            assert "SG-CMD-BLOCKED" not in gw.stderr()
            c = Client(gw.port)
            assert c.reply().startswith(b"220")
            assert c.cmd(b"VRFY someone").startswith(b"500")
            c.close()
            until(lambda: "SG-CMD-BLOCKED" in gw.stderr(), 10, "the info line")
        finally:
            assert gw.stop() == 0
    finally:
        sink.stop()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGHUP])
def test_protocol_log_is_reopened_after_rotation(sig: int, tmp_path: Path) -> None:
    log = tmp_path / "protocol.log"
    gw = Serve(
        tmp_path,
        "--maildir",
        str(tmp_path / "m"),
        "--protocol-log",
        str(log),
        "--protocol-log-format",
        "jsonl",
        "--workers",
        "2",
    )
    try:
        assert send_one(gw.port).startswith(b"250")
        rotated = tmp_path / "protocol.log.1"
        log.rename(rotated)  # logrotate without copytruncate
        gw.signal(sig)

        def new_file_has_a_session() -> bool:
            # Both workers must have re-opened: try a few sessions.
            if not log.exists():
                send_one(gw.port)
                return False
            send_one(gw.port)
            events = [json.loads(x)["event"] for x in log.read_text().splitlines()]
            return events.count("disconnect") >= 4

        until(new_file_has_a_session, 20, "sessions in the new file")
        # Every worker re-opened: nothing more lands in the rotated file.
        size = rotated.stat().st_size
        for _ in range(8):
            assert send_one(gw.port).startswith(b"250")
        assert rotated.stat().st_size == size
        assert gw.proc.poll() is None
    finally:
        assert gw.stop() == 0
    old = [json.loads(x)["session"] for x in rotated.read_text().splitlines()]
    assert old, "the first session stays in the rotated file"


def test_logrotate_file_rotates_the_configured_log_and_signals_a_reopen() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    text = (root / "deploy" / "logrotate").read_text()
    config = tomllib.loads((root / "deploy" / "smtpguard.toml").read_text())
    rules = "\n".join(ln.split("#")[0] for ln in text.splitlines())
    assert f"{config['protocol_log']['path']} {{" in rules
    assert "copytruncate" not in rules  # the re-open makes it unnecessary
    post = rules.split("postrotate", 1)[1].split("endscript", 1)[0]
    assert "--signal=USR1" in post and "smtpguard.service" in post
