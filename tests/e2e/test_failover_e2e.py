"""Two real upstream servers (Postfix smtp-sink) behind ``smtpguard serve``: one is
stopped between sessions, during DATA and after the dot before its reply, and every
message is counted at both sinks against what its client was told.

The rule checked: a message whose client was told 250 is at a sink, exactly once; a
message refused with 4xx before its dot was sent is at no sink; one refused after
its dot (the server died before its reply) may be at the sink that died, as it would
be without a gateway (RFC 1047's window), never at two. No client is told 250 for a
message no sink has, and every client gets every reply within a timeout.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gateway.test_serve_config import Serve
from tests.peers import LOOPBACK, GatewayProcess, free_port, need, run_cli, wait_port
from tests.postfix import PrivatePostfix, _alive

pytestmark = pytest.mark.e2e

REPLY_TIMEOUT = 20.0  # a reply slower than this is a hung session: the test fails


class Sink:
    """smtp-sink on a fixed port, stoppable (SIGKILL: no goodbye to its clients) and
    restartable on the same port; every dump of every run is kept for counting."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.extra = extra
        self.dumps = Path(tempfile.mkdtemp(prefix="smtpguard-sink-"))
        os.chmod(self.dumps, 0o777)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        cmd = [need("smtp-sink"), *user, *self.extra, "-d", f"{self.dumps}/m."]
        self.proc = subprocess.Popen(
            [*cmd, f"{LOOPBACK}:{self.port}", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def delivered(self) -> Counter[str]:
        """Message IDs of the complete messages this sink took (a dump that ends
        with the message's last line and the sink's closing empty line)."""
        found: Counter[str] = Counter()
        for path in self.dumps.iterdir():
            m = re.search(rb"\nEND-(\S+)\n\n\Z", path.read_bytes())
            if m:
                found[m.group(1).decode()] += 1
        return found

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dumps, ignore_errors=True)


class Refused(Exception):
    """The gateway answered 4xx (or closed): the message was not taken."""

    def __init__(self, code: int, after_dot: bool) -> None:
        super().__init__(code)
        self.code = code
        self.after_dot = after_dot


class Client:
    """A plain SMTP client with a bounded wait for every reply."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), REPLY_TIMEOUT)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.open = True

    def reply(self) -> int:
        while True:
            line = self.file.readline()  # socket.timeout: a hung session, the test fails
            if not line:
                self.open = False
                return 0  # closed without a reply
            if line[3:4] != b"-":
                return int(line[:3])

    def command(self, line: bytes) -> int:
        self.sock.sendall(line)
        return self.reply()

    def hello(self) -> None:
        code = self.reply()
        if code != 220:
            raise Refused(code, False)
        if self.command(b"HELO client.example.org\r\n") != 250:
            raise Refused(0, False)

    def send(self, mid: str, size: int = 4000, pause: float = 0.0) -> None:
        """One transaction; returns on 250, raises Refused on anything else."""
        for line in (b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n"):
            code = self.command(line)
            if code != 250:
                raise Refused(code, False)
        code = self.command(b"DATA\r\n")
        if code != 354:
            raise Refused(code, False)
        body = b"".join(b"line %06d of %s\r\n" % (i, mid.encode()) for i in range(size // 24))
        half = len(body) // 2
        self.sock.sendall(b"Subject: %s\r\n\r\n" % mid.encode() + body[:half])
        if pause:
            time.sleep(pause)
        try:
            self.sock.sendall(body[half:] + b"END-%s\r\n.\r\n" % mid.encode())
        except OSError:
            raise Refused(0, False) from None
        code = self.reply()
        if code != 250:
            raise Refused(code, True)

    def quit(self) -> None:
        if self.open:
            with contextlib.suppress(OSError):
                self.command(b"QUIT\r\n")
        self.sock.close()


@pytest.fixture
def sinks() -> Iterator[tuple[Sink, Sink]]:
    a = Sink("-W", ".:1:90")  # one dot in ten waits a second or more for its reply
    b = Sink()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def gateway(tmp_path: Path, a: Sink | str, b: Sink | str, *args: str) -> GatewayProcess:
    return GatewayProcess(
        "--upstream",
        a if isinstance(a, str) else a.address,
        "--upstream",
        b if isinstance(b, str) else b.address,
        "--upstream-check-interval",
        "0.2",
        "--config",
        str(_health_config(tmp_path)),
        *args,
        workdir=tmp_path,
    )


def _health_config(tmp_path: Path) -> Path:
    path = tmp_path / "health.toml"
    path.write_text("[gateway]\nupstream_fail_limit = 1\nupstream_backoff = 0.5\n")
    return path


def wait_until_used(gw: GatewayProcess, sink: Sink, tag: str) -> None:
    """Send single messages until one lands at ``sink`` (its health is back)."""
    deadline = time.monotonic() + 15
    n = 0
    while time.monotonic() < deadline:
        mid = f"{tag}-{n}"
        c = Client(gw.address)
        c.hello()
        c.send(mid)
        c.quit()
        if sink.delivered()[mid]:
            return
        n += 1
        time.sleep(0.1)
    raise AssertionError(f"{sink.address} not used again")


def test_round_robin_splits_200_sessions_within_ten_percent(
    tmp_path: Path, sinks: tuple[Sink, Sink]
) -> None:
    a, b = sinks
    a.kill()
    a.extra = ()  # no slow dots here: only the split is measured
    a.start()
    gw = gateway(tmp_path, a, b, "--upstream-policy", "round-robin")
    try:
        for i in range(200):
            c = Client(gw.address)
            c.hello()
            c.send(f"rr{i}", size=500)
            c.quit()
    finally:
        gw.stop()
    at_a, at_b = sum(a.delivered().values()), sum(b.delivered().values())
    assert at_a + at_b == 200
    assert abs(at_a - at_b) <= 20, (at_a, at_b)


def test_a_server_stopped_between_sessions_during_data_and_after_the_dot(
    tmp_path: Path, sinks: tuple[Sink, Sink]
) -> None:
    a, b = sinks
    gw = gateway(tmp_path, a, b)  # failover: A first while it is up
    try:
        a.kill()
        a.extra = ()
        a.start()
        wait_until_used(gw, a, "warm")

        # Between sessions: A is gone; the next session goes to B, and its client
        # sees nothing of it.
        a.kill()
        c = Client(gw.address)
        c.hello()
        c.send("between")
        c.quit()
        assert b.delivered()["between"] == 1 and a.delivered()["between"] == 0

        # During DATA: A dies with half the message sent. The client is told 451 at
        # its dot; the session's next transaction goes to B, with its HELO replayed.
        a.start()
        wait_until_used(gw, a, "back1")
        c = Client(gw.address)
        c.hello()
        killer = threading.Timer(0.3, a.kill)
        killer.start()
        with pytest.raises(Refused) as refused:
            c.send("during-data", size=20000, pause=1.0)
        killer.join()
        assert refused.value.code == 451
        c.send("after-data-loss")
        c.quit()
        assert a.delivered()["during-data"] + b.delivered()["during-data"] == 0
        assert b.delivered()["after-data-loss"] == 1

        # After the dot, before the reply: A takes every dot 3 s late and dies
        # meanwhile. The client is told 451, never 250; A may have kept the message
        # (the server took it and died before saying so).
        a.extra = ("-W", ".:3")
        a.start()
        time.sleep(0.6)  # a health check has seen it greet again
        c = Client(gw.address)
        c.hello()
        killer = threading.Timer(1.0, a.kill)
        killer.start()
        with pytest.raises(Refused) as refused:
            c.send("after-dot")  # A never answers: the reply is the gateway's, on the loss
        killer.join()
        assert refused.value.code == 451 and refused.value.after_dot
        c.send("after-dot-loss")
        c.quit()
        assert b.delivered()["after-dot"] == 0
        assert a.delivered()["after-dot"] <= 1
        assert b.delivered()["after-dot-loss"] == 1

        # Both down: 421 4.4.1, with no connection attempted once the checks have
        # marked them down.
        a.kill()
        b.kill()
        time.sleep(0.5)  # both marked down by the checks
        c = Client(gw.address)
        assert c.reply() == 421
        c.quit()
        b.start()
    finally:
        _, out = gw.stop()
    assert "SG-UPSTREAM-DOWN" in out and "SG-UPSTREAM-UP" in out, out


@dataclass
class Tally:
    told_250: Counter[str] = field(default_factory=Counter)
    refused_before_data: Counter[str] = field(default_factory=Counter)
    refused_at_dot: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_run(address: str, ids: list[str], tally: Tally) -> None:
    try:
        _client_sessions(address, ids, tally)
    except Exception as exc:  # a reply that never came (a hung session), or a bug
        tally.failures.append(f"client failed: {exc!r}")


def _client_sessions(address: str, ids: list[str], tally: Tally) -> None:
    """Send ``ids`` two to a session, each until it is accepted (a sender retrying
    4xx, as an MTA does), at most 8 tries each."""
    pending = [(mid, 0) for mid in ids]
    while pending:
        c = Client(address)
        try:
            c.hello()
        except Refused:
            c.quit()
            continue
        sent = 0
        while pending and sent < 2 and c.open:
            mid, tries = pending.pop(0)
            try:
                c.send(mid, size=random.choice((2000, 30000)), pause=random.choice((0, 0.3)))
                with tally.lock:
                    tally.told_250[mid] += 1
            except Refused as exc:
                with tally.lock:
                    bucket = tally.refused_at_dot if exc.after_dot else tally.refused_before_data
                    bucket[mid] += 1
                if not 400 <= exc.code < 500:
                    tally.failures.append(f"{mid}: refused with {exc.code or 'no reply'}")
                if tries + 1 >= 8:
                    tally.failures.append(f"{mid}: not accepted in 8 tries")
                else:
                    pending.append((mid, tries + 1))
                break  # a new session for the rest
            sent += 1
        c.quit()


def test_several_hundred_messages_while_one_server_keeps_dying(
    tmp_path: Path, sinks: tuple[Sink, Sink]
) -> None:
    a, b = sinks
    gw = gateway(tmp_path, a, b, "--upstream-policy", "round-robin")
    ids = [f"m{i:04d}" for i in range(400)]
    tally = Tally()
    stop = threading.Event()
    kills = 0

    def chaos() -> None:
        nonlocal kills
        rnd = random.Random(27)
        while not stop.wait(rnd.uniform(0.8, 1.6)):
            a.kill()
            kills += 1
            if stop.wait(rnd.uniform(0.2, 0.5)):
                break
            a.start()

    started = time.monotonic()
    killer = threading.Thread(target=chaos)
    killer.start()
    threads = [
        threading.Thread(target=_client_run, args=(gw.address, ids[i::6], tally)) for i in range(6)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "a client hung"
    finally:
        stop.set()
        killer.join()
        gw.stop()
    elapsed = time.monotonic() - started
    at_a, at_b = a.delivered(), b.delivered()
    assert not tally.failures, tally.failures[:5]
    wrong = []
    for mid in ids:
        copies = at_a[mid] + at_b[mid]
        told = tally.told_250[mid]
        if told != 1:
            wrong.append(f"{mid}: told 250 {told} times")
        # Every 250 is a copy at a sink; beyond those, only a refusal at the dot may
        # have left one (the server kept it and died before its reply; a server lost
        # during DATA never had the end of data).
        if not told <= copies <= told + tally.refused_at_dot[mid]:
            wrong.append(
                f"{mid}: {copies} copies (A {at_a[mid]}, B {at_b[mid]}), told 250 {told} "
                f"times, refused at its dot {tally.refused_at_dot[mid]} times"
            )
    assert not wrong, wrong[:10]
    assert kills >= 3
    refusals = sum(tally.refused_before_data.values()) + sum(tally.refused_at_dot.values())
    assert refusals > 0, "the server never died in the middle of a transaction"
    kept = sum(at_a[m] + at_b[m] - tally.told_250[m] for m in ids)
    print(
        f"\n{len(ids)} messages in {elapsed:.1f}s, server A killed {kills} times: "
        f"{sum(at_a.values())} at A, {sum(at_b.values())} at B, "
        f"{sum(tally.refused_before_data.values())} refused 4xx before DATA, "
        f"{sum(tally.refused_at_dot.values())} at the final dot ({kept} of those kept "
        "by A: it died after the dot)"
    )


def test_a_4xx_greeting_is_never_shown_and_the_session_goes_to_the_next(
    tmp_path: Path,
) -> None:
    busy = Sink("-Q", "CONNECT")  # greets with 421 and hangs up, as a busy server does
    b = Sink()
    try:
        gw = gateway(tmp_path, busy, b)
        try:
            for i in range(5):
                c = Client(gw.address)
                c.hello()  # a 220: the 421 of the first server never reaches the client
                c.send(f"busy{i}")
                c.quit()
        finally:
            _, out = gw.stop()
        assert sum(b.delivered().values()) == 5 and not busy.delivered()
        assert "SG-UPSTREAM-DOWN upstream " + busy.address in out, out
    finally:
        busy.close()
        b.close()


def test_reload_moves_new_sessions_to_a_changed_list_and_keeps_sessions_in_flight(
    tmp_path: Path, sinks: tuple[Sink, Sink]
) -> None:
    a, b = sinks
    a.kill()
    a.extra = ()
    a.start()
    config = tmp_path / "smtpguard.toml"
    config.write_text(f'[gateway]\nupstream = ["{a.address}"]\n')
    g = Serve(config)
    try:
        in_flight = Client(f"{LOOPBACK}:{g.port}")
        in_flight.hello()
        assert in_flight.command(b"MAIL FROM:<a@example.org>\r\n") == 250
        g.reload(f'[gateway]\nupstream = ["{b.address}", "{a.address}"]\n', "SG-CONFIG-RELOADED")
        assert not [ln for ln in g.lines if "need a restart" in ln], g.lines
        fresh = Client(f"{LOOPBACK}:{g.port}")
        fresh.hello()
        fresh.send("fresh")
        fresh.quit()
        assert in_flight.command(b"RCPT TO:<b@example.net>\r\n") == 250
        assert in_flight.command(b"DATA\r\n") == 354
        in_flight.sock.sendall(b"Subject: x\r\n\r\nEND-in-flight\r\n.\r\n")
        assert in_flight.reply() == 250
        in_flight.quit()
    finally:
        g.stop()
    assert a.delivered() == Counter({"in-flight": 1})
    assert b.delivered() == Counter({"fresh": 1})


def _in_mailbox(pf: PrivatePostfix) -> Counter[str]:
    found: Counter[str] = Counter()
    for m in pf.mailbox_messages():
        found.update(x.decode() for x in re.findall(rb"\nEND-(\S+)\n", m))
    return found


def test_postfix_stopped_and_started_again_with_xclient_towards_each_server(
    tmp_path: Path,
) -> None:
    """Postfix first, smtp-sink second, XCLIENT towards both: mail goes to Postfix,
    to the sink while Postfix is stopped, to Postfix again once it is back."""
    sink = Sink()
    try:
        with PrivatePostfix("smtpguard-failover", smtpd_authorized_xclient_hosts=LOOPBACK) as pf:
            gw = gateway(tmp_path, pf.address, sink, "--xclient")
            try:

                def send(tag: str) -> None:
                    for i in range(5):
                        c = Client(gw.address)
                        c.hello()
                        c.send(f"{tag}{i}")
                        c.quit()

                send("first")
                pid = pf._master_pid()
                assert pf._postfix("stop").returncode == 0
                deadline = time.monotonic() + 20
                while pid is not None and _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                send("stopped")
                assert pf._postfix("start").returncode == 0
                wait_port(pf.port)
                time.sleep(0.6)  # a health check has seen it greet again
                send("again")
            finally:
                _, out = gw.stop()
            want = Counter({f"{t}{i}": 1 for t in ("first", "again") for i in range(5)})
            deadline = time.monotonic() + 30
            while _in_mailbox(pf) != want and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _in_mailbox(pf) == want
            assert sink.delivered() == Counter({f"stopped{i}": 1 for i in range(5)})
            assert "SG-UPSTREAM-DOWN" in out and "SG-UPSTREAM-UP" in out, out
    finally:
        sink.close()


def test_per_server_metrics_with_two_workers(tmp_path: Path, sinks: tuple[Sink, Sink]) -> None:
    a, b = sinks
    a.kill()
    a.extra = ()
    a.start()
    mport = free_port()
    gw = gateway(
        tmp_path,
        a,
        b,
        "--upstream-policy",
        "round-robin",
        "--workers",
        "2",
        "--metrics-listen",
        f"{LOOPBACK}:{mport}",
    )
    try:
        wait_port(mport, gw.proc)  # the endpoint starts once the workers are forked
        for i in range(20):
            c = Client(gw.address)
            c.hello()
            c.send(f"metrics{i}", size=300)
            c.quit()
        a.kill()
        for i in range(4):  # each worker sees A refuse, marks it down, moves to B
            c = Client(gw.address)
            c.hello()
            c.send(f"down{i}", size=300)
            c.quit()
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            text = _scrape(mport)
            sessions = sum(
                _value(text, "smtpguard_upstream_sessions_total", f'upstream="{s.address}"')
                for s in (a, b)
            )
            a_up = _value(text, "smtpguard_upstream_up", f'upstream="{a.address}"')
            if sessions >= 24 and a_up == 0:
                break
            time.sleep(0.2)
    finally:
        gw.stop()
    at_a, at_b = sum(a.delivered().values()), sum(b.delivered().values())
    assert at_a + at_b == 24
    label_a, label_b = f'upstream="{a.address}"', f'upstream="{b.address}"'
    assert _value(text, "smtpguard_upstream_sessions_total", label_a) == at_a
    assert _value(text, "smtpguard_upstream_sessions_total", label_b) == at_b
    assert _value(text, "smtpguard_upstream_failures_total", label_a) >= 1
    assert _value(text, "smtpguard_upstream_up", label_a) == 0
    assert _value(text, "smtpguard_upstream_up", label_b) == 1
    assert _value(text, "smtpguard_upstream_greeting_seconds_total", label_b) > 0
    assert _value(text, "smtpguard_policy_events_total", 'id="SG-UPSTREAM-DOWN"') >= 1


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_start_up_needs_one_server_and_warns_of_the_others(tmp_path: Path) -> None:
    dead1, dead2 = f"{LOOPBACK}:{free_port()}", f"{LOOPBACK}:{free_port()}"
    out = run_cli("serve", "--listen", f"{LOOPBACK}:{free_port()}", "--upstream", dead1,
                  "--upstream", dead2, cwd=tmp_path)  # fmt: skip
    assert out.returncode != 0
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("smtpguard serve: error: no upstream server reachable: --upstream " + dead1)
    ), out.stderr
    b = Sink()
    try:
        gw = GatewayProcess("--upstream", dead1, "--upstream", b.address, workdir=tmp_path)
        c = Client(gw.address)  # served: the start-up block is out
        c.hello()
        c.send("started")
        c.quit()
        _, text = gw.stop()
        assert b.delivered() == Counter({"started": 1})
    finally:
        b.close()
    assert f"relaying to   {dead1}, {b.address} (failover, no health checks)" in text, text
    assert f"WARNING       --upstream {dead1}: not reachable (Connection refused)" in text, text


@pytest.mark.parametrize("xclient", [False, True])
def test_a_server_closing_an_idle_session_costs_the_sender_nothing(
    tmp_path: Path, xclient: bool
) -> None:
    """Postfix closes a session idle past its ``smtpd_timeout`` (421, then close).
    The sender, still connected to the gateway, sends its next message: it goes
    through on a fresh connection (XCLIENT, when set, and the HELO replayed), and
    each message is in the mailbox once."""
    settings = {"smtpd_authorized_xclient_hosts": LOOPBACK} if xclient else {}
    with PrivatePostfix("smtpguard-idle", smtpd_timeout="2s", **settings) as pf:
        flags = ("--xclient",) if xclient else ()
        gw = GatewayProcess(
            "--upstream", pf.address, *flags, "--log-level", "info", workdir=tmp_path
        )
        try:
            c = Client(gw.address)
            c.hello()
            c.send("before-idle")
            pf.wait_log(lambda text: "timeout after" in text and "disconnect from" in text)
            time.sleep(0.3)  # the gateway has read the 421 and the close
            c.send("after-idle")
            c.quit()
        finally:
            _, out = gw.stop()
        want = Counter({"before-idle": 1, "after-idle": 1})
        deadline = time.monotonic() + 30
        while _in_mailbox(pf) != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _in_mailbox(pf) == want
        assert "SG-UPSTREAM-IDLE-CLOSED" in out, out
        # Two sessions carried mail (start-up probes carry none): the first ended by
        # Postfix's timeout (no QUIT), the fresh one with the HELO replayed.
        # With XCLIENT, each opens with the gateway's EHLO and XCLIENT, and Postfix
        # sees the client (NAME=[UNAVAILABLE]: "unknown"), not the gateway.
        found = re.findall(r"smtpd\[\d+\]: disconnect from (\S+) (.*helo=1.*)", pf.log())
        assert len(found) == 2, found
        for who, counts in found:
            assert who == ("unknown[127.0.0.1]" if xclient else "localhost[127.0.0.1]"), found
            assert ("xclient=" in counts) is xclient, found
            assert " mail=1 rcpt=1 data=1 " in counts, found
        assert "quit=1" not in found[0][1] and "quit=1" in found[1][1], found


def test_a_server_dying_while_the_session_is_idle_sends_the_next_message_to_the_other(
    tmp_path: Path, sinks: tuple[Sink, Sink]
) -> None:
    a, b = sinks
    gw = gateway(tmp_path, a, b, "--log-level", "info")  # failover: A first while it is up
    try:
        a.kill()
        a.extra = ()
        a.start()
        wait_until_used(gw, a, "warm")
        c = Client(gw.address)
        c.hello()
        c.send("on-a")
        a.kill()
        time.sleep(0.5)  # the gateway has seen A's connection close
        c.send("on-b")
        c.quit()
    finally:
        _, out = gw.stop()
    assert a.delivered()["on-a"] == 1 and b.delivered()["on-b"] == 1
    assert a.delivered()["on-b"] == 0 and b.delivered()["on-a"] == 0
    assert "SG-UPSTREAM-IDLE-CLOSED" in out, out
