"""On-demand benchmark: CPU time per message, by process, for one relay at a time.

    python3 bench/cpu.py [--messages 20000] [--sessions 20] [--size 1000]
                         [--targets haproxy,gateway,gateway-pure] [--no-metrics]

For each target, ``smtp-source -s 20 -m N -l 1000`` runs through it to a fresh
``smtp-sink`` (after a warm-up), and the CPU time each process used is divided by
the message count: the relay (user and system time from /proc), smtp-sink, and
smtp-source. Targets:

- ``haproxy``: HAProxy in TCP mode;
- ``gateway``: ``smtpguard serve`` as installed (mailguard mode, one worker);
- ``gateway-pure``: the same from ``src/`` with ``PYTHONPATH``, i.e. pure Python
  (no mypyc), to see what compiling saves.

The gateway runs with ``--metrics-listen`` unless ``--no-metrics``. CPU per message
is steadier than a rate on a shared machine, but still compare within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    ROOT,
    free_port,
    message_rate,
    start_gateway,
    start_haproxy,
    start_sink,
    stop,
)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(name: str, args: argparse.Namespace, workdir: Path) -> None:
    sink, sink_port = start_sink()
    relay: subprocess.Popen[bytes] | None = None
    try:
        if name == "haproxy":
            relay, port = start_haproxy(sink_port, workdir)
        else:
            env = dict(os.environ)
            if name == "gateway-pure":
                env["PYTHONPATH"] = str(ROOT / "src")
            metrics = None if args.no_metrics else free_port()
            relay, port = start_gateway(sink_port, "mailguard", 1, metrics, env=env)
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
    n = args.messages
    us = 1e6 / n
    user, system = (r1[0] - r0[0]) * us, (r1[1] - r0[1]) * us
    print(
        f"{name:14s} {n / elapsed:7.0f} msg/s   relay {user + system:4.0f} us/msg "
        f"(user {user:3.0f}, sys {system:3.0f})   smtp-sink {sum(s1) * us - sum(s0) * us:3.0f}"
        f"   smtp-source {(c1 - c0) * us:3.0f}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--targets", default="haproxy,gateway,gateway-pure")
    ap.add_argument("--no-metrics", action="store_true")
    args = ap.parse_args()
    targets = args.targets.split(",")
    unknown = set(targets) - {"haproxy", "gateway", "gateway-pure"}
    if unknown:
        ap.error(f"--targets: unknown {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="smtpguard-bench-") as tmp:
        for name in targets:
            measure(name, args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
