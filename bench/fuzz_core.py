"""On-demand fuzzing of the inspection core: random bytes and random event orders.

    python3 bench/fuzz_core.py [--inputs 1000000] [--seed 1] [--workers 2]

A :class:`~smtpguard.core.session.Session` is driven the way the shell drives it,
with random events: client bytes (SMTP commands, message lines, dots, bare CR/LF,
NUL, over-long lines, random bytes, all cut at random points), server replies (every
code class, multi-line, garbage, cut at random points), connects, disconnects, EOF,
timers, drains and cut drains, in random order. The fuzzer plays the server, so it knows every
reply the server sent: each carries a unique tag ``#n``.

Checked after every input, on every run:

* no exception (any is a failure, with the seed and event index to replay it);
* never a 2xx the server did not send: every 2xx reply to the client carries the tag
  of a 2xx reply the server sent (the gateway's own replies are never 2xx);
* replies in order: the tags the client sees only ever increase;
  (after a STARTTLS passed through, the bytes are TLS, relayed as they are: not
  checked);
* bounded buffers: the client bytes the core holds stay under the shell's pause mark
  plus one read, and the replies it owes under ``max_pending`` plus one per read.

Policies rotate between mailguard, ESMTP, smuggling normalization and PIX emulation.
``tests/reliability/test_fuzz_core.py`` runs a smaller share in CI, with hypothesis.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import random
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from smtpguard.core.actions import CloseServer, OpenServer, ToClient, ToServer
from smtpguard.core.events import (
    ClientData,
    ClientEof,
    Cut,
    ServerClosed,
    ServerConnected,
    ServerData,
    Shutdown,
    Start,
    TimerFired,
)
from smtpguard.core.policy import BannerPolicy, Emulation, Mode, Policy, Smuggling
from smtpguard.core.session import Phase, Session

# The shell stops reading above this many held client bytes (flow.BACKLOG_HIGH)
# and feeds at most one read (a FEED_SLICE) at a time.
BACKLOG_HIGH = 64 * 1024
MAX_CHUNK = 4096

POLICIES = [
    Policy(banner=BannerPolicy.PASS),
    Policy.for_mode(Mode.ESMTP, banner=BannerPolicy.PASS),
    Policy.for_mode(Mode.ESMTP, banner=BannerPolicy.PASS, smuggling=Smuggling.NORMALIZE),
    Policy(banner=BannerPolicy.PASS, emulation=Emulation(pix=True)),
]

COMMANDS = [
    b"HELO client.example",
    b"EHLO client.example",
    b"MAIL FROM:<a@example.org>",
    b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<>",
    b"RCPT TO:<b@example.net>",
    b"RCPT TO:<postmaster>",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY b",
    b"EXPN list",
    b"HELP",
    b"STARTTLS",
    b"AUTH PLAIN AGEAYg==",
    b"BDAT 10",
    b"BDAT 5 LAST",
    b"XCLIENT ADDR=1.2.3.4",
    b"TURN",
    b"",
    b"mail from:<a@example.org>",
]
DATA_LINES = [
    b"Subject: hi",
    b"From: <a@example.org>",
    b"",
    b"body text",
    b".",
    b"..stuffed",
    b".\r\nMAIL FROM:<evil@example.org>",
    b"Content-Type: multipart/mixed; boundary=x",
    b"--x",
]
ENDINGS = [b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\x00\r\n"]
CODES = [220, 221, 250, 250, 250, 251, 334, 354, 354, 421, 450, 451, 452, 500, 501, 502, 550, 554]

TAG = re.compile(rb"#(\d+)")


class InvariantError(AssertionError):
    pass


@dataclass
class Fuzzer:
    """One stream of random sessions from a seed; counts inputs and findings."""

    seed: int
    rng: random.Random = field(init=False)
    inputs: int = 0
    sessions: int = 0
    replies: int = 0
    relayed: int = 0  # messages the server accepted through the core
    phases: Counter[str] = field(default_factory=Counter)  # phases seen, for coverage

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- random material -----------------------------------------------------------
    def client_bytes(self) -> bytes:
        r = self.rng
        parts: list[bytes] = []
        for _ in range(r.randint(1, 12)):
            kind = r.random()
            if kind < 0.5:
                parts.append(r.choice(COMMANDS) + r.choice(ENDINGS))
            elif kind < 0.8:
                parts.append(r.choice(DATA_LINES) + r.choice(ENDINGS))
            elif kind < 0.9:
                parts.append(r.randbytes(r.randint(1, 64)))
            elif kind < 0.95:
                parts.append(b"x" * r.choice([600, 1001, 5000, 70_000]) + b"\r\n")
            else:
                parts.append(b"\r\n" * r.randint(1, 200))
        return b"".join(parts)

    def server_reply(self, tag: int, code: int | None = None) -> tuple[bytes, bool]:
        """A reply tagged ``#tag`` on every line (``code``, or a random one); True if
        it is a 2xx."""
        r = self.rng
        if code is None and r.random() < 0.03:
            return r.randbytes(r.randint(1, 40)), False
        code = code or r.choice(CODES)
        lines = r.randint(1, 4) if r.random() < 0.2 else 1
        text = [f"{code}-mx.example #{tag}" for _ in range(lines - 1)]
        text.append(f"{code} ok #{tag}")
        out = "\r\n".join(text).encode() + b"\r\n"
        if code == 250 and lines > 1 and r.random() < 0.5:
            out = (
                f"250-mx.example #{tag}\r\n250-PIPELINING #{tag}\r\n250-STARTTLS #{tag}\r\n"
                f"250-CHUNKING #{tag}\r\n250 8BITMIME #{tag}\r\n"
            ).encode()
        return out, code // 100 == 2

    def cuts(self, data: bytes) -> Iterable[bytes]:
        r = self.rng
        i = 0
        while i < len(data):
            n = r.choice([1, 2, 3, 7, 64, 512, MAX_CHUNK])
            yield data[i : i + n]
            i += n

    def script(self) -> bytes:
        """A mostly well-formed transaction, sometimes corrupted: reaches DATA."""
        r = self.rng
        msg = b"".join(r.choice(DATA_LINES[:4]) + b"\r\n" for _ in range(r.randint(0, 30)))
        if r.random() < 0.2:
            msg += r.choice(DATA_LINES) + r.choice(ENDINGS)
        steps = [
            r.choice(COMMANDS[:2]) + b"\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b@example.net>\r\n",
            b"DATA\r\n",
            msg + b".\r\n",
        ]
        if r.random() < 0.3:
            steps.append(b"QUIT\r\n")
        return b"".join(steps[r.randint(0, 2) if r.random() < 0.3 else 0 :])

    # -- one session ---------------------------------------------------------------
    def session(self, events: int) -> None:
        r = self.rng
        policy = r.choice(POLICIES)
        if r.random() < 0.3:
            policy = dataclasses.replace(policy, max_pending=r.choice([1, 4, 16]))
        s = Session(policy, trace=r.random() < 0.5, peer=("192.0.2.1", 1000))
        now = 1000.0
        state = _Check(policy)
        server = _Server()
        state.take(s.handle(Start(), now), server)
        tag = 0

        def reply(code: int | None = None) -> None:
            nonlocal tag
            tag += 1
            data, is_2xx = self.server_reply(tag, code)
            if is_2xx:
                state.server_2xx.add(tag)
            for chunk in self.cuts(data):
                state.take(s.handle(ServerData(chunk), now), server)

        if r.random() < 0.95:
            state.take(s.handle(ServerConnected(), now), server)
            reply(220 if r.random() < 0.95 else None)
        for _ in range(events):
            if s.closed:
                break
            now += r.choice([0.0, 0.001, 0.5, 30.0, 400.0]) if r.random() < 0.05 else 0.0
            k = r.random()
            self.inputs += 1
            if k < 0.4:
                data = self.script() if r.random() < 0.6 else self.client_bytes()
                for chunk in self.cuts(data):
                    if s.client_backlog > BACKLOG_HIGH:
                        break  # the shell stops reading here
                    state.take(s.handle(ClientData(chunk), now), server)
                    state.bounds(s)
            elif k < 0.9:
                owed = server.owed.popleft() if server.owed and r.random() < 0.9 else None
                reply(owed if owed is not None and r.random() < 0.9 else None)
            elif k < 0.93:
                state.take(s.handle(ServerConnected(), now), server)
            elif k < 0.95:
                state.take(s.handle(ServerClosed(), now), server)
                server.reset()
            elif k < 0.97:
                state.take(s.handle(TimerFired(), now + r.choice([1.0, 100.0, 1000.0])), server)
            elif k < 0.98:
                state.take(s.handle(Shutdown(), now), server)
            elif k < 0.985:
                state.take(s.handle(Cut(), now), server)
            else:
                state.take(s.handle(ClientEof(), now), server)
            state.bounds(s)
            self.phases[s.phase.value] += 1
        self.sessions += 1
        self.replies += state.replies
        self.relayed += s.messages_relayed

    def run(self, inputs: int) -> None:
        while self.inputs < inputs:
            try:
                self.session(self.rng.randint(1, 60))
            except InvariantError:
                raise
            except Exception as exc:
                raise InvariantError(
                    f"seed {self.seed}, after {self.inputs} inputs: {exc!r}"
                ) from exc


class _Server:
    """What a plain server owes: the reply code for each command it was sent."""

    def __init__(self) -> None:
        self.owed: deque[int] = deque()
        self.buf = b""
        self.in_data = False

    def reset(self) -> None:
        self.owed.clear()
        self.buf = b""
        self.in_data = False

    def receive(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if self.in_data:
                if line == b".":
                    self.in_data = False
                    self.owed.append(250)
                continue
            verb = line[:4].upper()
            if verb == b"DATA":
                self.in_data = True
                self.owed.append(354)
            elif verb == b"QUIT":
                self.owed.append(221)
            elif verb == b"AUTH":
                self.owed.append(334)
            else:
                self.owed.append(250)


class _Check:
    """The invariants, fed with every action list the session returns."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.server_2xx: set[int] = set()
        self.last_tag = 0
        self.pending = b""  # client-bound bytes not yet a whole line
        self.reply_tags: list[int] = []
        self.replies = 0
        self.tunnel = False  # STARTTLS passed through: the bytes are TLS, not replies

    def take(self, actions: list[object], server: _Server) -> None:
        for a in actions:
            if isinstance(a, ToClient):
                if not self.tunnel:
                    self._client_bytes(bytes(a.data))
            elif isinstance(a, ToServer):
                server.receive(bytes(a.data))
            elif isinstance(a, OpenServer | CloseServer):
                server.reset()

    def _client_bytes(self, data: bytes) -> None:
        buf = self.pending + data
        *lines, self.pending = buf.split(b"\r\n")
        for line in lines:
            tags = [int(m) for m in TAG.findall(line)]
            for t in tags:
                if t < self.last_tag:
                    raise InvariantError(
                        f"reply out of order: #{t} after #{self.last_tag}: {line!r}"
                    )
                self.last_tag = t
            final = (len(line) >= 4 and line[3:4] == b" ") or len(line) == 3
            if final:
                self.replies += 1
            if line[:1] == b"2" and final:
                # The greeting may be rewritten (the PIX mask): it is still the
                # server's, if the server sent a 2xx at all.
                greeting = self.replies == 1 and line[:3] == b"220" and self.server_2xx
                if not greeting and not any(t in self.server_2xx for t in tags):
                    raise InvariantError(f"2xx the server did not send: {line!r}")

    def bounds(self, s: Session) -> None:
        if s.phase is Phase.TUNNEL:
            self.tunnel = True
        if s.client_backlog > BACKLOG_HIGH + MAX_CHUNK:
            raise InvariantError(f"client backlog {s.client_backlog} over the bound")
        owed = len(s.replies)
        if owed > self.policy.max_pending + 256:
            raise InvariantError(f"{owed} replies owed: over the bound")
        if len(s.commands) > len(self.policy.allowed_verbs) + 64:
            raise InvariantError(f"{len(s.commands)} per-verb counters: over the bound")


def fuzz(seed: int, inputs: int) -> tuple[int, int, int, int, Counter[str]]:
    f = Fuzzer(seed)
    f.run(inputs)
    return f.inputs, f.sessions, f.replies, f.relayed, f.phases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    per = -(-a.inputs // a.workers)
    jobs = [(a.seed + i, per) for i in range(a.workers)]
    try:
        with multiprocessing.Pool(a.workers) as pool:
            results = pool.starmap(fuzz, jobs)
    except InvariantError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    inputs = sum(r[0] for r in results)
    sessions = sum(r[1] for r in results)
    replies = sum(r[2] for r in results)
    relayed = sum(r[3] for r in results)
    phases: Counter[str] = sum((r[4] for r in results), Counter())
    took = time.monotonic() - t0
    print("inputs seen in each phase:", dict(phases.most_common()))
    print(
        f"{inputs} inputs in {sessions} sessions ({replies} replies to the client, "
        f"{relayed} messages relayed), "
        f"seeds {a.seed}..{a.seed + a.workers - 1}, {took:.0f} s: 0 exceptions, "
        "0 false 2xx, 0 replies out of order, buffers within bounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
