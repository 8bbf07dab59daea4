"""Session IDs name one session across workers, restarts and hosts (sessionid.py)."""

from __future__ import annotations

import json
import os
import smtplib
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from smtpguard.gateway.sessionid import ALPHABET, PREFIX_LENGTH, SessionIds, base32
from tests.e2e.conftest import GatewayProcess
from tests.peers import LOOPBACK, SmtpSink


@given(st.integers(min_value=0, max_value=2**64))
def test_base32_is_a_numeral(n: int) -> None:
    text = base32(n)
    assert set(text) <= set(ALPHABET)
    assert int(text.translate(str.maketrans(ALPHABET, "0123456789ABCDEFGHIJKLMNOPQRSTUV")), 32) == n


def test_ids_of_one_process_share_a_prefix_and_never_repeat() -> None:
    ids = SessionIds()
    made = [ids.next() for _ in range(5000)]
    assert len(set(made)) == len(made)
    prefixes = {i.partition(".")[0] for i in made}
    assert len(prefixes) == 1 and len(prefixes.pop()) == PREFIX_LENGTH
    assert made[0].endswith(".1")


def test_a_restarted_process_does_not_repeat_the_ids_of_the_last() -> None:
    # A new process starts its counter at 1 again; its prefix is what keeps it apart.
    first, second = SessionIds(), SessionIds()
    assert first.next() != second.next()


def test_a_prefix_drawn_before_a_fork_is_not_shared_with_the_child() -> None:
    ids = SessionIds()
    parent = ids.next()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first ID and leave at once
        os.write(w, ids.next().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert child.partition(".")[0] != parent.partition(".")[0]
    assert child.endswith(".1")


def _quit_sessions(address: str, n: int) -> None:
    host, _, port = address.rpartition(":")
    for _ in range(n):
        with smtplib.SMTP(host, int(port), timeout=20) as c:
            c.helo("client.example.test")


def test_two_workers_fifty_sessions_each_give_a_hundred_distinct_ids(tmp_path: Path) -> None:
    """The protocol log of two workers names every session once: before, each worker
    counted from 00000001 and logscan merged their sessions."""
    sink = SmtpSink(tmp_path)
    log = tmp_path / "proto.log"
    gw = GatewayProcess(
        "--upstream",
        sink.address,
        "--protocol-log",
        str(log),
        "--protocol-log-format",
        "jsonl",
        "--workers",
        "2",
        workdir=tmp_path,
    )
    try:
        # Two clients at a time, so both workers' sockets are served.
        threads = [threading.Thread(target=_quit_sessions, args=(gw.address, 50)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        code, out = gw.stop()
        sink.stop()
    assert code == 0, out
    connects = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"connect"' in line
    ]
    connects = [c for c in connects if c.get("event") == "connect"]
    # 100 sessions, and the test harness's own connect that waited for the port.
    assert len(connects) in (100, 101), f"{len(connects)} connects logged"
    ids = {c["session"] for c in connects}
    assert len(ids) == len(connects), f"{len(connects)} sessions carried {len(ids)} IDs"
    workers = {i.partition(".")[0] for i in ids}
    # Which worker takes a connection is the kernel's choice (SO_REUSEPORT hashing);
    # over 100 connections from distinct ports both are all but certain to be used.
    assert len(workers) == 2, f"sessions came from {len(workers)} worker prefix(es)"
    assert all(c.get("peer", "").startswith(LOOPBACK) for c in connects)
