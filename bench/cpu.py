"""On-demand benchmark: CPU time per message, by process, for one relay at a time.

    python3 bench/cpu.py [--messages 20000] [--sessions 20] [--size 1000] [--rounds 1]
                         [--targets haproxy,gateway,esmtp,gateway-pure] [--no-metrics]
                         [--phases] [--phase-sessions 2000]

For each target, ``smtp-source -s 20 -m N -l 1000`` runs through it to a fresh
``smtp-sink`` (after a warm-up), and the CPU time each process used is divided by
the message count: the relay (user and system time from /proc, the process and its
worker processes), smtp-sink, and smtp-source. With ``--rounds`` the targets are
measured interleaved, round after round, and the medians are given as ratios to
HAProxy's. Targets (``NAME`` or ``NAME@SRC``):

- ``haproxy``: HAProxy in TCP mode;
- ``gateway``: ``smtpguard serve`` in mailguard mode, one worker, no protocol log;
- ``esmtp``: full inspection: esmtp mode, default checks, the IMS protocol log on;
- ``gateway-pure``: ``gateway`` from this checkout's ``src/`` (pure Python unless
  it was built in place), to see what compiling saves.

``@SRC`` runs the gateway from another source tree (``PYTHONPATH=SRC``, e.g. a copy
built with ``python3 setup.py build_ext --inplace``), so two builds can be compared
in one run: ``--targets haproxy,esmtp@/tmp/old/src,esmtp@src``. Without it the
installed package is used.

``--phases`` measures, instead of smtp-source, where a session's CPU goes: a
lock-step client (one command at a time, no concurrency) runs the same session
through each target cut after each step (greeting and QUIT; + EHLO; + MAIL; + RCPT;
+ DATA and the message), and the relay's CPU per session for each cut (from
/proc/PID/task/*/schedstat, in nanoseconds) is given with the difference from the
previous cut: what each step costs. The same client also times every command
straight to smtp-sink and through the target: the added latency per lock-step
command, p50 and p99.

The gateway runs with ``--metrics-listen`` unless ``--no-metrics``. CPU per message
is steadier than a rate on a shared machine, but still compare within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    LOOPBACK,
    ROOT,
    free_port,
    message_rate,
    start_haproxy,
    start_sink,
    stop,
    wait_port,
)

TICK = os.sysconf("SC_CLK_TCK")
KINDS = ("haproxy", "gateway", "esmtp", "gateway-pure")
# The lock-step session of --phases, cut after each step.
CUTS = ("greeting+QUIT", "+EHLO", "+MAIL", "+RCPT", "+DATA")


def _pids(pid: int) -> list[int]:
    """The process and its children (the gateway's workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids += [int(c) for c in children]
    return pids


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and its children so far."""
    user = system = 0.0
    for p in _pids(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        user += int(fields[11]) / TICK
        system += int(fields[12]) / TICK
    return user, system


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of a process, its threads and its children so far."""
    total = 0
    for p in _pids(pid):
        for task in Path(f"/proc/{p}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    return total


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def start_gateway(
    kind: str, src: str | None, upstream: int, metrics: int | None, workdir: Path, workers: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    mode = "esmtp" if kind == "esmtp" else "mailguard"
    cmd = [sys.executable, "-m", "smtpguard", "serve", "--listen", f"{LOOPBACK}:{port}"]
    cmd += ["--upstream", f"{LOOPBACK}:{upstream}", "--mode", mode, "--max-sessions", "5000"]
    cmd += ["--workers", str(workers)]
    if kind == "esmtp":
        cmd += ["--protocol-log", str(workdir / f"protocol-{port}.log")]
        cmd += ["--protocol-log-format", "ims"]
    if metrics is not None:
        cmd += ["--metrics-listen", f"{LOOPBACK}:{metrics}"]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    elif kind == "gateway-pure":
        env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port, proc)
    return proc, port


def start_target(
    target: str, args: argparse.Namespace, sink_port: int, workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    kind, _, src = target.partition("@")
    if kind == "haproxy":
        started: tuple[subprocess.Popen[bytes], int] = start_haproxy(sink_port, workdir)
        return started
    metrics = None if args.no_metrics else free_port()
    return start_gateway(kind, src or None, sink_port, metrics, workdir, args.workers)


def measure(target: str, args: argparse.Namespace, workdir: Path) -> float:
    """One smtp-source run through ``target``; prints it, returns relay us/msg."""
    sink, sink_port = start_sink()
    relay: subprocess.Popen[bytes] | None = None
    try:
        relay, port = start_target(target, args, sink_port, workdir)
        message_rate(port, 1000, args.sessions, args.size)  # warm-up
        r0, s0, c0 = cpu_seconds(relay.pid), cpu_seconds(sink.pid), children_cpu()
        start = time.perf_counter()
        message_rate(port, args.messages, args.sessions, args.size)
        elapsed = time.perf_counter() - start
        r1, s1, c1 = cpu_seconds(relay.pid), cpu_seconds(sink.pid), children_cpu()
    finally:
        if relay is not None:
            stop(relay)
        stop(sink)
    n: int = args.messages
    us = 1e6 / n
    user, system = (r1[0] - r0[0]) * us, (r1[1] - r0[1]) * us
    print(
        f"{target:24s} {n / elapsed:7.0f} msg/s   relay {user + system:4.0f} us/msg "
        f"(user {user:3.0f}, sys {system:3.0f})   smtp-sink {sum(s1) * us - sum(s0) * us:3.0f}"
        f"   smtp-source {(c1 - c0) * us:3.0f}",
        flush=True,
    )
    return user + system


# -- --phases: a lock-step client ---------------------------------------------------


class Client:
    """One blocking SMTP client session, timing each command's reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            while end >= 0:
                line = self.buf[: end + 2]
                if len(line) >= 4 and line[3:4] != b"-":
                    code = self.buf[:3]
                    self.buf = self.buf[end + 2 :]
                    return code
                self.buf = self.buf[end + 2 :]
                end = self.buf.find(b"\r\n")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed")
            self.buf += data

    def command(self, line: bytes, expect: bytes, times: list[float] | None) -> None:
        start = time.perf_counter()
        self.sock.sendall(line)
        code = self.reply()
        if times is not None:
            times.append(time.perf_counter() - start)
        if code != expect:
            raise RuntimeError(f"{line[:20]!r}: got {code!r}, expected {expect!r}")


def session(
    port: int, cut: int, body: bytes, times: list[float] | None = None, hello: bytes = b"EHLO"
) -> None:
    c = Client(port)
    try:
        if c.reply() != b"220":
            raise RuntimeError("no 220 greeting")
        if cut >= 1:
            c.command(hello + b" bench.example.org\r\n", b"250", times)
        if cut >= 2:
            c.command(b"MAIL FROM:<bench@example.org>\r\n", b"250", times)
        if cut >= 3:
            c.command(b"RCPT TO:<sink@example.net>\r\n", b"250", times)
        if cut >= 4:
            c.command(b"DATA\r\n", b"354", times)
            c.command(body, b"250", times)
        c.command(b"QUIT\r\n", b"221", times)
        while c.sock.recv(4096):
            pass
    finally:
        c.sock.close()


def make_body(size: int) -> bytes:
    head = b"From: bench@example.org\r\nTo: sink@example.net\r\nSubject: bench\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def phases(target: str, args: argparse.Namespace, workdir: Path) -> list[float]:
    """CPU per session of ``target`` for each cut of the lock-step session (us)."""
    body = make_body(args.size)
    # mailguard mode allows the RFC 821 commands only: HELO, not EHLO
    hello = b"HELO" if target.partition("@")[0] in ("gateway", "gateway-pure") else b"EHLO"
    sink, sink_port = start_sink()
    relay: subprocess.Popen[bytes] | None = None
    per_cut: list[float] = []
    try:
        relay, port = start_target(target, args, sink_port, workdir)
        n = args.phase_sessions
        for _ in range(200):  # warm-up
            session(port, 4, body, hello=hello)
        for cut in range(len(CUTS)):
            t0 = cpu_ns(relay.pid)
            for _ in range(n):
                session(port, cut, body, hello=hello)
            per_cut.append((cpu_ns(relay.pid) - t0) / n / 1000)
        direct: list[float] = []
        through: list[float] = []
        for _ in range(n // 4):
            session(sink_port, 4, body, direct, hello)
            session(port, 4, body, through, hello)
    finally:
        if relay is not None:
            stop(relay)
        stop(sink)
    steps = "  ".join(
        f"{name} {us:4.0f}" if i == 0 else f"{name} {us - per_cut[i - 1]:+4.0f}"
        for i, (name, us) in enumerate(zip(CUTS, per_cut, strict=True))
    )
    added50 = (pct(through, 0.5) - pct(direct, 0.5)) * 1e6
    added99 = (pct(through, 0.99) - pct(direct, 0.99)) * 1e6
    print(
        f"{target:24s} us/session: {steps}  = {per_cut[-1]:4.0f}   "
        f"added latency per command p50 {added50:4.0f} us, p99 {added99:5.0f} us",
        flush=True,
    )
    return per_cut


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--targets", default="haproxy,gateway,gateway-pure")
    ap.add_argument("--no-metrics", action="store_true")
    ap.add_argument("--phases", action="store_true", help="CPU per step of a lock-step session")
    ap.add_argument("--phase-sessions", type=int, default=2000)
    args = ap.parse_args()
    targets = args.targets.split(",")
    unknown = {t for t in targets if t.partition("@")[0] not in KINDS}
    if unknown:
        ap.error(f"--targets: unknown {', '.join(sorted(unknown))}")
    results: dict[str, list[float]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="smtpguard-bench-") as tmp:
        for r in range(args.rounds):
            if args.rounds > 1:
                print(f"-- round {r + 1}", flush=True)
            for target in targets:
                if args.phases:
                    results[target].append(phases(target, args, Path(tmp))[-1])
                else:
                    results[target].append(measure(target, args, Path(tmp)))
    if args.rounds > 1 or "haproxy" in results:
        base = statistics.median(results["haproxy"]) if "haproxy" in results else None
        first = statistics.median(results[targets[0]])
        what = "us/session" if args.phases else "us/msg"
        print(f"\nmedian relay CPU over {args.rounds} round(s), {what}:")
        for target, values in results.items():
            med = statistics.median(values)
            vs = f"   = {med / base:4.2f}x haproxy" if base else ""
            print(f"  {target:24s} {med:5.0f}{vs}   {med / first:4.2f}x {targets[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
