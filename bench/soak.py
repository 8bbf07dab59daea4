"""On-demand soak and slow-client runs of the gateway (loopback only).

    python3 bench/soak.py soak [--messages 100000] [--workers 2] [--sessions 20]
    python3 bench/soak.py slowloris [--slow 5000] [--workers 2] [--seconds 60]

``soak``: Postfix ``smtp-source -N`` (a unique recipient number per message) sends
``--messages`` messages through ``smtpguard serve --workers N`` to ``smtp-sink``,
which writes each message to its own file. The messages are then counted at the
sink by recipient number: lost (a number missing) and duplicated (a number seen
twice). The RSS of all gateway processes is sampled every two seconds; the report
gives it after the first tenth of the messages (warm) and at the end.

``slowloris``: ``--slow`` connections are opened to the gateway and kept: a third
never send anything, a third send one byte a second, a third send a burst of
commands and never read a reply. Meanwhile a normal sender delivers one message per
session, one after the other; its session latency (connect to the reply to QUIT) is
reported with the same sender alone before the attack. The gateway runs with
``--max-sessions`` above the number of slow connections (the worst case: every slow
client admitted). The process fd limit is raised to its hard limit here; the gateway
inherits it (two descriptors per session: client and upstream).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.peers import LOOPBACK, free_port, need, wait_port


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Sink:
    def __init__(self, dump: bool) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="smtpguard-soak-"))
        os.chmod(self.dir, 0o777)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        # The time in the file name makes the sink's random suffix collide only
        # within one second.
        dump_args = ["-d", f"{self.dir}/%H%M%S."] if dump else []
        self.proc = subprocess.Popen(
            [
                need("smtp-sink"),
                *user,
                "-m",
                "30000",
                *dump_args,
                f"{LOOPBACK}:{self.port}",
                "1024",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, None)

    def recipients(self) -> list[str]:
        out = []
        for p in self.dir.iterdir():
            with p.open("rb") as f:
                for line in f:
                    if line.startswith(b"X-Rcpt-Args:"):
                        out.append(line.split(b"<", 1)[1].split(b"@", 1)[0].decode())
                        break
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Gateway:
    def __init__(self, upstream: int, workers: int, *extra: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpguard",
                "serve",
                "--listen",
                f"{LOOPBACK}:{self.port}",
                "--upstream",
                f"{LOOPBACK}:{upstream}",
                "--workers",
                str(workers),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        time.sleep(1)

    def pids(self) -> list[int]:
        pid = self.proc.pid
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        return [pid, *map(int, kids)]

    def rss_kb(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def soak(args: argparse.Namespace) -> int:
    sink = Sink(dump=True)
    gw = Gateway(sink.port, args.workers)
    samples: list[tuple[float, int, int]] = []  # (seconds, files at the sink, rss)
    done = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not done.wait(2.0):
            samples.append((time.monotonic() - t0, len(os.listdir(sink.dir)), gw.rss_kb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        start_rss = gw.rss_kb()
        r = subprocess.run(
            [
                need("smtp-source"),
                "-N",
                "-s",
                str(args.sessions),
                "-m",
                str(args.messages),
                "-l",
                str(args.size),
                "-f",
                "a@example.org",
                "-t",
                "b@example.net",
                f"{LOOPBACK}:{gw.port}",
            ],
            capture_output=True,
            text=True,
        )
        took = time.monotonic() - t0
        time.sleep(2)
        end_rss = gw.rss_kb()
        done.set()
        code = gw.stop()
        got = sink.recipients()
    finally:
        done.set()
        if gw.proc.poll() is None:
            gw.proc.kill()
        sink.stop()
    numbers = [int(x.rstrip("b")) for x in got if x.rstrip("b").isdigit()]
    seen = set(numbers)
    lost = len(set(range(1, args.messages + 1)) - seen)
    dup = len(numbers) - len(seen)
    first = samples[0] if samples else None
    warm = next((s for s in samples if s[1] >= args.messages // 10), first)
    peak = max((s[2] for s in samples), default=end_rss)
    print(f"smtp-source exit {r.returncode} {r.stderr.strip()[:200]}")
    print(
        f"soak: {args.messages} messages of {args.size} octets, {args.sessions} sessions at a "
        f"time, gateway --workers {args.workers}: {len(numbers)} at the sink, {lost} lost, "
        f"{dup} duplicated, {took:.0f} s ({args.messages / took:.0f} msg/s); gateway exit {code}"
    )
    if warm is not None:
        print(
            f"RSS of all gateway processes: start {start_rss / 1024:.1f} MB, warm (after "
            f"{warm[1]} messages) {warm[2] / 1024:.1f} MB, peak {peak / 1024:.1f} MB, "
            f"end {end_rss / 1024:.1f} MB (end - warm {(end_rss - warm[2]) / 1024:+.1f} MB)"
        )
    return 0 if lost == 0 and dup == 0 and r.returncode == 0 else 1


def _latency(port: int, count: int, stop: threading.Event | None = None) -> list[float]:
    out: list[float] = []
    while len(out) < count and not (stop is not None and stop.is_set()):
        t = time.monotonic()
        with smtplib.SMTP(LOOPBACK, port, timeout=60) as s:
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: probe\r\n\r\nhi\r\n")
        out.append(time.monotonic() - t)
    return out


async def _slow_clients(port: int, n: int, hold: float, opened: list[int]) -> None:
    async def one(i: int) -> None:
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            return
        opened[0] += 1
        try:
            kind = i % 3
            end = time.monotonic() + hold
            if kind == 1:  # one byte a second, a command that never ends
                line = b"HELO slowloris.example" + b"x" * 1000
                j = 0
                while time.monotonic() < end and not writer.transport.is_closing():
                    writer.write(line[j % len(line) : j % len(line) + 1])
                    j += 1
                    await asyncio.sleep(1.0)
                if writer.transport.is_closing():
                    opened[1] += 1  # the gateway closed it before the end
            elif kind == 2:  # a burst of commands, replies never read
                writer.write(b"NOOP\r\n" * 100)
                await asyncio.sleep(hold)
            else:  # connected, silent
                await asyncio.sleep(hold)
        except OSError:
            pass
        finally:
            writer.transport.abort()

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # stay under the listen backlog
    await asyncio.gather(*tasks)


def _summary(lat: list[float]) -> str:
    if not lat:
        return "no messages"
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return (
        f"{len(lat)} messages, median {statistics.median(lat) * 1000:.0f} ms, "
        f"p99 {q[98] * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
    )


def slowloris(args: argparse.Namespace) -> int:
    limit = _raise_fd_limit()
    sink = Sink(dump=False)
    gw = Gateway(sink.port, args.workers, "--max-sessions", str(args.slow + 1000))
    try:
        alone = _latency(gw.port, 50)
        opened = [0, 0]  # connections held, trickling ones the gateway closed
        stop = threading.Event()
        result: list[float] = []

        def sender() -> None:
            time.sleep(args.seconds / 3)  # the slow clients are all connected by then
            result.extend(_latency(gw.port, 10**9, stop))

        th = threading.Thread(target=sender)
        th.start()
        asyncio.run(_slow_clients(gw.port, args.slow, args.seconds, opened))
        stop.set()
        th.join()
        rss = gw.rss_kb()
        code = gw.stop()
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
        sink.stop()
    print(
        f"slowloris: {opened[0]} of {args.slow} slow connections opened for {args.seconds} s "
        f"({opened[1]} one-byte-a-second ones closed by the gateway before that) "
        f"(fd limit {limit}), gateway --workers {args.workers}; RSS at the end "
        f"{rss / 1024:.1f} MB; gateway exit {code}"
    )
    print(f"  normal sender alone:          {_summary(alone)}")
    print(f"  normal sender under the load: {_summary(result)}")
    return 0 if result and opened[0] == args.slow else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="run", required=True)
    s = sub.add_parser("soak")
    s.add_argument("--messages", type=int, default=100_000)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--sessions", type=int, default=20)
    s.add_argument("--size", type=int, default=500)
    s.set_defaults(func=soak)
    w = sub.add_parser("slowloris")
    w.add_argument("--slow", type=int, default=5000)
    w.add_argument("--workers", type=int, default=2)
    w.add_argument("--seconds", type=float, default=60)
    w.set_defaults(func=slowloris)
    a = ap.parse_args(argv)
    result: int = a.func(a)
    return result


if __name__ == "__main__":
    sys.exit(main())
