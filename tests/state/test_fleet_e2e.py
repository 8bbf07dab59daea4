"""A fleet as it runs in production, on loopback: HAProxy (PROXY protocol v2) in
front of two gateway instances with two workers each, sharing one real
redis-server. The per-address cap and the rate-limit action of a check hold across
the fleet, a message accepted through one instance and re-sent through the other is
suppressed, and killing Redis mid-run loses no message.

Clients bind to 127.0.0.2; the gateways trust 127.0.0.1 (HAProxy) for PROXY
headers and so see 127.0.0.2 as the client.
"""

from __future__ import annotations

import itertools
import json
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess, SmtpSink, free_port, need, wait_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

CLIENT = "127.0.0.2"
# The transactions' client addresses, one per session. The fleet's
# max_sessions_per_ip (2) counts a session until its worker has given its lease
# back to the store, which may be after the same client's next session has begun
# (on the other instance): the tests of one session at a time use an address each.
_CLIENTS = itertools.count()


def fresh_client() -> str:
    return f"127.0.0.{30 + next(_CLIENTS) % 200}"


@dataclass
class Fleet:
    port: int  # HAProxy's frontend
    gateways: list[GatewayProcess]
    logs: list[Path]
    sink: SmtpSink
    redis: RedisServer

    def events(self, event_id: str) -> list[int]:
        """Which instances (0, 1) logged ``event_id``, once per occurrence."""
        found = []
        for i, log in enumerate(self.logs):
            if not log.exists():
                continue
            for line in log.read_text().splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if obj.get("event") == "policy" and obj.get("id") == event_id:
                    found.append(i)
        return found

    def data_events(self) -> list[int]:
        """Messages each instance received from its clients (relayed or not)."""
        counts = []
        for log in self.logs:
            text = log.read_text() if log.exists() else ""
            counts.append(text.count('"event": "data"'))
        return counts

    def wait_events(self, event_id: str, count: int) -> list[int]:
        deadline = time.monotonic() + 10  # the protocol log is flushed once a second
        while len(self.events(event_id)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.events(event_id)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    redis = RedisServer()
    sink = SmtpSink(tmp_path)
    gateways: list[GatewayProcess] = []
    logs = [tmp_path / f"gw{i}.jsonl" for i in range(2)]
    hap = None
    try:
        for i in range(2):
            cfg = tmp_path / f"gw{i}.toml"
            cfg.write_text(
                f'hostname = "gw{i}.example.test"\n'
                f'[gateway]\nupstream = "{sink.address}"\nworkers = 2\n'
                f'[protocol_log]\npath = "{logs[i]}"\nformat = "jsonl"\n'
                f'[access]\nproxy_protocol_from = ["{LOOPBACK}/32"]\nmax_sessions_per_ip = 2\n'
                f'[state]\nurl = "{redis.url}"\ntimeout = 1.0\nretry = 0.5\n'
                "[dedupe]\nenabled = true\n"
                '[checks.sender_pattern]\naction = "rate-limit"\npatterns = ["limited@.*"]\n'
                "rate = 3\nperiod = 3600.0\n"
            )
            gateways.append(
                GatewayProcess("--config", str(cfg), "--workers", "2", workdir=tmp_path)
            )
        port = free_port()
        hcfg = tmp_path / "haproxy.cfg"
        servers = "".join(
            f"  server gw{i} {LOOPBACK}:{g.port} send-proxy-v2\n" for i, g in enumerate(gateways)
        )
        hcfg.write_text(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
            "  timeout server 60s\n"
            f"frontend smtp\n  bind {LOOPBACK}:{port}\n  default_backend gateways\n"
            f"backend gateways\n  balance roundrobin\n{servers}"
        )
        hap = subprocess.Popen(
            [need("haproxy"), "-db", "-f", str(hcfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(port, hap)  # (a probe from 127.0.0.1: not the client address under test)
        yield Fleet(port, gateways, logs, sink, redis)
    finally:
        if hap is not None:
            hap.terminate()
            hap.wait(10)
        for g in gateways:
            g.stop()
        sink.stop()
        redis.close()


def message(n: int, subject: str = "") -> bytes:
    return (
        f"From: a@example.org\r\nTo: b@example.net\r\nSubject: {subject or f'fleet {n}'}\r\n"
        f"Message-ID: <fleet-{n}@example.org>\r\n\r\nmessage {n}\r\n"
    ).encode()


def send(port: int, body: bytes) -> tuple[int, bytes]:
    """One transaction through HAProxy; the final reply (code, text)."""
    with smtplib.SMTP(LOOPBACK, port, timeout=20, source_address=(fresh_client(), 0)) as s:
        s.helo("client.example.org")
        s.mail("a@example.org")
        s.rcpt("b@example.net")
        code, text = s.data(body)
        s.quit()
    return code, text


def delivered(sink: SmtpSink, count: int) -> list[bytes]:
    deadline = time.monotonic() + 10
    while len(sink.messages()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # nothing more may arrive
    return sink.messages()


def greeting(port: int) -> tuple[socket.socket, bytes]:
    s = socket.create_connection((LOOPBACK, port), 10, source_address=(CLIENT, 0))
    s.settimeout(15)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(1000)
        if not chunk:
            break
        data += chunk
    return s, data


def test_session_cap_holds_across_the_fleet(fleet: Fleet) -> None:
    held = [greeting(fleet.port) for _ in range(8)]  # round robin: both instances
    codes = [d[:3] for _, d in held]
    for s, _ in held:
        s.close()
    assert codes.count(b"220") == 2, codes
    assert codes.count(b"421") == 6, codes
    refused_by = set(fleet.wait_events("SG-ACCESS-SESSION-CAP", 6))
    assert refused_by == {0, 1}  # both instances refused: the count is the fleet's


def test_killing_redis_mid_run_loses_nothing(fleet: Fleet) -> None:
    sent = 0
    for _ in range(3):
        assert send(fleet.port, message(sent))[0] == 250
        sent += 1
    # A transaction under way when the store goes: its lookup at the final dot fails.
    client = fresh_client()
    with smtplib.SMTP(LOOPBACK, fleet.port, timeout=20, source_address=(client, 0)) as s:
        s.helo("client.example.org")
        s.mail("a@example.org")
        s.rcpt("b@example.net")
        fleet.redis.stop()
        assert s.data(message(sent))[0] == 250
        sent += 1
    for _ in range(3):  # the store is down: limits and dedupe fail open
        assert send(fleet.port, message(sent))[0] == 250
        sent += 1
    fleet.redis.start()
    for _ in range(3):
        assert send(fleet.port, message(sent))[0] == 250
        sent += 1
    got = delivered(fleet.sink, sent)
    subjects = sorted(re.findall(rb"Subject: (fleet \d+)", b"".join(got)))
    assert subjects == sorted(f"fleet {n}".encode() for n in range(sent))  # each once
    assert fleet.wait_events("SG-STATE-FAIL-OPEN", 1)


def test_a_copy_resent_through_the_other_instance_is_suppressed(fleet: Fleet) -> None:
    body = message(100, "sent twice")
    assert send(fleet.port, body) == (250, b"2.0.0 Ok")  # smtp-sink names no queue ID
    copies = [send(fleet.port, body) for _ in range(2)]  # round robin: both instances
    code, text = copies[0]
    assert code == 250 and text.startswith(b"2.0.0 Already accepted as ")
    assert copies[1] == copies[0]
    assert len(delivered(fleet.sink, 1)) == 1  # the server got it once
    suppressed = fleet.wait_events("SG-DEDUPE-SUPPRESSED", 2)
    relayed = [n - suppressed.count(i) for i, n in enumerate(fleet.data_events())]
    assert sorted(relayed) == [0, 1]  # one instance relayed the original...
    assert suppressed.count(relayed.index(0)) >= 1  # ...the other suppressed a copy


def test_a_sender_rate_limit_holds_across_the_fleet(fleet: Fleet) -> None:
    """sender_pattern counts per sender address: 3 per hour through the whole fleet."""
    codes = []
    for n in range(8):  # round robin: both instances, both workers of each
        # A client address per session: the fleet's max_sessions_per_ip (2) counts a
        # session until its worker has given its lease back to the store, which a
        # busy worker may do after the client's next-but-one session has started;
        # the sender's rate, counted per sender address, is what is tested here.
        client = f"127.0.0.{10 + n}"
        with smtplib.SMTP(LOOPBACK, fleet.port, timeout=20, source_address=(client, 0)) as s:
            s.helo("client.example.org")
            code, text = s.mail("limited@example.org")
            codes.append(code)
            if code == 250:
                s.rcpt("b@example.net")
                assert s.data(message(200 + n))[0] == 250
            else:
                assert text == b"5.7.1 Sender address rejected"
            s.quit()
    assert codes == [250] * 3 + [550] * 5, (codes, fleet.events("SG-STATE-FAIL-OPEN"))
    assert len(delivered(fleet.sink, 3)) == 3
    # One event per MAIL ("log" within the rate, "reject" beyond), from both instances:
    # they counted in the one store.
    assert set(fleet.wait_events("SG-CHK-SENDER-PATTERN", 8)) == {0, 1}
