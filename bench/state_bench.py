"""On-demand benchmark: what shared state costs ([state] local and redis, [dedupe]).

    python3 bench/state_bench.py [--messages 5000] [--sessions 20] [--size 1000]
                                 [--rounds 3] [--workers 2] [--latency 1500]

Five variants of the same gateway (same mode, workers and upstream), started once
and measured interleaved over the rounds in one run:

- ``plain``: no rule needs the store (nothing is opened: the baseline);
- ``local``: ``max_sessions_per_ip`` and ``connection_rate`` set (high enough never
  to refuse), embedded store: one lease and one token per session;
- ``local+dedupe``: the same and ``[dedupe] enabled``: one lookup (final dot held)
  and one record per message;
- ``redis``, ``redis+dedupe``: the same with a private ``redis-server``.

1. Message rate: ``smtp-source -s 20 -m 5000 -l 1000`` (every message unique), the
   median per variant as a ratio to ``plain``.
2. Latency at the final dot: one client sends messages one at a time and times the
   final dot's write to the 250; p50 and p99 per variant and the difference to
   ``plain`` (what the held dot adds).
3. Store round trips per session and per message (Redis ``INFO commandstats``).

Loopback only. Absolute numbers drift on a shared machine; compare within a run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers import LOOPBACK, free_port, need, wait_port  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

from bench.run import _reply, message_rate, start_sink  # noqa: E402

LIMITS = "[access]\nmax_sessions_per_ip = 100000\nconnection_rate = 10000000\n"


def variants(redis_url: str, state_dir: Path) -> dict[str, str]:
    local = f'[state]\ndirectory = "{state_dir}"\n'
    redis = f'[state]\nurl = "{redis_url}"\n'
    dedupe = "[dedupe]\nenabled = true\n"
    return {
        "plain": "",
        "local": LIMITS + local,
        "local+dedupe": LIMITS + local + dedupe,
        "redis": LIMITS + redis,
        "redis+dedupe": LIMITS + redis + dedupe,
    }


def start_gateway(
    upstream: int, extra: str, workers: int, workdir: Path, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = workdir / f"{name.replace('+', '-')}.toml"
    cfg.write_text(
        f'[gateway]\nlisten = "{LOOPBACK}:{port}"\nupstream = "{LOOPBACK}:{upstream}"\n'
        f"workers = {workers}\nmax_sessions = 5000\n{extra}"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpguard", "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc, port


def final_dot_latencies(port: int, count: int, tag: str) -> list[float]:
    """Seconds from writing the final dot to reading the reply, one message at a
    time (unique bodies, 20 per session)."""
    out: list[float] = []
    n = 0
    while n < count:
        with socket.create_connection((LOOPBACK, port), 30) as s:
            s.settimeout(30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _reply(s)
            s.sendall(b"HELO bench\r\n")
            _reply(s)
            for _ in range(min(20, count - n)):
                for cmd in (b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>", b"DATA"):
                    s.sendall(cmd + b"\r\n")
                    _reply(s)
                body = (
                    f"From: a@example.org\r\nTo: b@example.net\r\nSubject: {tag} {n}\r\n\r\n"
                    + "x" * 900
                    + "\r\n"
                ).encode()
                s.sendall(body)
                start = time.perf_counter()
                s.sendall(b".\r\n")
                reply = _reply(s)
                out.append(time.perf_counter() - start)
                if not reply.startswith(b"250"):
                    raise RuntimeError(f"message refused: {reply!r}")
                n += 1
            s.sendall(b"QUIT\r\n")
    return out


def redis_calls(redis: RedisServer, port: int, messages: int, reuse: bool, size: int) -> int:
    """Round trips to Redis (commands and script calls) the gateway made for
    ``messages`` messages sent one at a time: a session each, or all in one session
    (``reuse``, smtp-source -d)."""
    before = commandstats(redis)
    subprocess.run(
        [
            need("smtp-source"),
            *(["-d"] if reuse else []),
            "-s",
            "1",
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            "bench@example.org",
            "-t",
            "sink@example.net",
            f"{LOOPBACK}:{port}",
        ],
        check=True,
        capture_output=True,
    )
    time.sleep(1.5)  # records and lease releases run after the replies
    after = commandstats(redis)
    return sum(
        n - before.get(cmd, 0)
        for cmd, n in after.items()
        if cmd not in IN_SCRIPTS and cmd != "info"
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# Commands only our Lua scripts run (INFO commandstats counts them as well).
IN_SCRIPTS = frozenset(
    {"time", "zcard", "zscore", "zremrangebyscore", "zadd", "zcount", "hmget", "hset"}
    | {"pexpire", "pttl"}
)


def commandstats(redis: RedisServer) -> dict[str, int]:
    with socket.create_connection((LOOPBACK, redis.port), 5) as s:
        s.sendall(b"INFO commandstats\r\n")
        f = s.makefile("rb")
        size = int(f.readline()[1:])
        text = f.read(size + 2).decode()
    return {m[1]: int(m[2]) for m in re.finditer(r"cmdstat_(\w+(?:\|\w+)?):calls=(\d+)", text)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency", type=int, default=1500, help="messages timed per variant")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="smtpguard-state-bench-"))
    redis = RedisServer()
    sink, sink_port = start_sink()
    procs: list[subprocess.Popen[bytes]] = [sink]
    try:
        ports: dict[str, int] = {}
        for name, extra in variants(redis.url, workdir / "state").items():
            proc, ports[name] = start_gateway(sink_port, extra, args.workers, workdir, name)
            procs.append(proc)
        for port in ports.values():  # warm up (imports, first store connections)
            message_rate(port, 200, 10, args.size)
        rates: dict[str, list[float]] = {name: [] for name in ports}
        for _ in range(args.rounds):
            for name, port in ports.items():
                rates[name].append(message_rate(port, args.messages, args.sessions, args.size))
        lat: dict[str, list[float]] = {}
        for name, port in ports.items():
            lat[name] = final_dot_latencies(port, args.latency, name)
        # Store operations: one more run per Redis variant, counted by the server.
        ops: dict[str, tuple[float, float]] = {}
        for name in ("redis", "redis+dedupe"):
            one_each = redis_calls(redis, ports[name], 400, False, args.size)  # 400 sessions
            one_session = redis_calls(redis, ports[name], 400, True, args.size)  # 1 session
            per_message = one_session / 400
            ops[name] = (one_each / 400 - per_message, per_message)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"message rate (smtp-source -s {args.sessions} -m {args.messages} -l {args.size}), "
        f"{args.workers} workers, median of {args.rounds} rounds:"
    )
    base = statistics.median(rates["plain"])
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:<14} {med:8.0f} msg/s  = {med / base:.2f}x plain")
    print(f"\nlatency from the final dot to the 250 ({args.latency} messages, one at a time):")
    b50, b99 = pct(lat["plain"], 50) * 1e3, pct(lat["plain"], 99) * 1e3
    for name, values in lat.items():
        p50, p99 = pct(values, 50) * 1e3, pct(values, 99) * 1e3
        print(
            f"  {name:<14} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms"
            f"   added: p50 {p50 - b50:+.3f} ms  p99 {p99 - b99:+.3f} ms"
        )
    print("\nRedis round trips (commands and script calls, INFO commandstats):")
    for name, (per_session, per_message) in ops.items():
        print(f"  {name:<14} {per_session:.2f} per session + {per_message:.2f} per message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
