"""Stopping ``smtpguard serve``: a second stop signal during the drain cuts it short.

The operator who presses Ctrl-C twice (or whose service manager sends SIGTERM again)
must not wait out the whole ``drain_grace``: the process stops at once, says how
many sessions it cut, and every client of a cut session gets ``421 4.3.2``, never a
2xx the server did not send, also when the server has the end of data and its reply
is still owed. Real processes on loopback: the gateway, a raw client and an
upstream that holds its reply to the end of data.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.procs import Client, Serve, until

pytestmark = pytest.mark.timeout(90)


class HoldingUpstream:
    """An SMTP server that answers every command but never the end of data: the
    gateway's client waits for a final reply the server owes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages_ended = 0  # ends of data received (never answered)
        self.partial = 0  # connections closed in the middle of message data
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        in_data = False
        try:
            conn.sendall(b"220 held.example ESMTP\r\n")
            while True:
                data = conn.recv(65536)
                if not data:
                    if in_data:
                        with self.lock:
                            self.partial += 1
                    return
                buf += data
                while True:
                    if in_data:
                        if b"\r\n.\r\n" not in b"\r\n" + buf:
                            break
                        buf = b""
                        in_data = False
                        with self.lock:
                            self.messages_ended += 1  # and no reply, ever
                        continue
                    line, sep, rest = buf.partition(b"\r\n")
                    if not sep:
                        break
                    buf = rest
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        in_data = True
                        conn.sendall(b"354 go ahead\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        return
                    else:
                        conn.sendall(b"250 ok\r\n")
        except OSError:
            if in_data:
                with self.lock:
                    self.partial += 1

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _two_clients_in_flight(gw: Serve, up: HoldingUpstream) -> tuple[Client, Client]:
    """One client in the middle of its message, one waiting for the final reply."""
    mid = Client(gw.port)
    mid.transaction_open()
    assert mid.cmd(b"DATA").startswith(b"354")
    mid.sock.sendall(b"Subject: cut\r\n\r\nthe first half of a message\r\n")
    owed = Client(gw.port)
    owed.transaction_open()
    assert owed.cmd(b"DATA").startswith(b"354")
    owed.sock.sendall(b"Subject: owed\r\n\r\nwhole\r\n.\r\n")
    until(lambda: up.messages_ended == 1, 20, "the server to hold the end of data")
    return mid, owed


@pytest.mark.parametrize(("workers", "how"), [("1", "sigterm"), ("2", "sigterm"), ("2", "ctrl-c")])
def test_a_second_stop_signal_cuts_the_drain_and_says_how_many(
    workers: str, how: str, tmp_path: Path
) -> None:
    up = HoldingUpstream()
    try:
        # A grace far longer than the test's timeout: only the cut can end it in time.
        gw = Serve(
            tmp_path, "--upstream", up.address, "--workers", workers, "--drain-grace", "3600"
        )
        try:
            mid, owed = _two_clients_in_flight(gw, up)
            stop = gw.ctrl_c if how == "ctrl-c" else lambda: gw.signal(signal.SIGTERM)
            stop()
            until(lambda: "draining sessions" in gw.stderr(), 20, "the drain to start")
            assert gw.proc.poll() is None  # the drain waits for both transactions
            stop()
            assert gw.proc.wait(30) == 0
        finally:
            if gw.proc.poll() is None:
                gw.stop()
        assert mid.reply().startswith(b"421 4.3.2")
        assert owed.reply().startswith(b"421 4.3.2")  # never the 250 the server did not send
        assert mid.reply() == b"" and owed.reply() == b""  # and closed
        err = gw.stderr().splitlines()
        assert "smtpguard: second stop signal: stopping now, 2 sessions cut" in "\n".join(err)
        assert err[-1] == "smtpguard: stopped"
        # The message cut in the middle never reached its end at the server.
        until(lambda: up.partial == 1, 10, "the upstream of the cut message to close")
        assert up.messages_ended == 1
    finally:
        up.close()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_a_second_stop_reaches_workers_that_have_not_run_since_the_first(
    tmp_path: Path,
) -> None:
    """Both stop signals reach a worker that was stopped (as a busy machine may leave
    it) while the supervisor sent them: two SIGTERMs would merge into one there, and
    the worker would drain for the whole grace. The cut is a signal of its own."""
    up = HoldingUpstream()
    try:
        gw = Serve(tmp_path, "--upstream", up.address, "--workers", "2", "--drain-grace", "3600")
        try:
            mid, owed = _two_clients_in_flight(gw, up)
            workers = _children(gw.proc.pid)
            assert len(workers) == 2, workers
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            try:
                gw.signal(signal.SIGTERM)
                until(lambda: "draining sessions" in gw.stderr(), 20, "the drain to start")
                gw.signal(signal.SIGTERM)
                time.sleep(0.5)  # the supervisor has passed both on
            finally:
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
            assert gw.proc.wait(30) == 0
        finally:
            if gw.proc.poll() is None:
                gw.stop()
        assert mid.reply().startswith(b"421 4.3.2") and owed.reply().startswith(b"421 4.3.2")
        assert "2 sessions cut" in gw.stderr(), gw.stderr()
    finally:
        up.close()


def test_the_cut_line_is_json_with_log_format_json(tmp_path: Path) -> None:
    up = HoldingUpstream()
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        f'[gateway]\nupstream = "{up.address}"\nlog_format = "json"\ndrain_grace = 3600.0\n'
    )
    try:
        gw = Serve(tmp_path, "--config", str(cfg), "--workers", "2", wait=False)
        until(lambda: '"SG-GATEWAY-STARTED"' in gw.stdout(), 20, "the start-up object")
        mid, owed = _two_clients_in_flight(gw, up)
        gw.signal(signal.SIGTERM)
        until(lambda: "SG-GATEWAY-DRAINING" in gw.stderr(), 20, "the drain to start")
        gw.signal(signal.SIGTERM)
        assert gw.proc.wait(30) == 0
        assert mid.reply().startswith(b"421 4.3.2") and owed.reply().startswith(b"421 4.3.2")
        lines = [json.loads(ln) for ln in gw.stderr().splitlines()]
        events = [ln.get("event") for ln in lines]
        assert events[-3:] == ["SG-GATEWAY-DRAINING", "SG-GATEWAY-CUT", "SG-GATEWAY-STOPPED"]
        cut = lines[-2]
        assert cut["sessions_cut"] == 2 and cut["reason"] == "second stop signal"
        assert cut["level"] == "info" and "2 sessions cut" in cut["message"]
    finally:
        up.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_end_of_the_grace_cuts_the_same_way(workers: str, tmp_path: Path) -> None:
    """One stop signal, a transaction that never ends: when drain_grace runs out the
    client gets 421 4.3.2 (not a bare reset) and the line says so."""
    up = HoldingUpstream()
    try:
        gw = Serve(tmp_path, "--upstream", up.address, "--workers", workers, "--drain-grace", "1")
        mid, owed = _two_clients_in_flight(gw, up)
        gw.signal(signal.SIGTERM)
        assert gw.proc.wait(30) == 0
        assert mid.reply().startswith(b"421 4.3.2") and owed.reply().startswith(b"421 4.3.2")
        err = gw.stderr()
        assert "smtpguard: drain grace over: stopping now, 2 sessions cut" in err
        assert err.splitlines()[-1] == "smtpguard: stopped"
    finally:
        up.close()
