"""On-demand benchmark: the inspection core alone, no I/O.

    python3 bench/core.py [--sessions 20000]
    python3 bench/core.py --against OTHER/src [--runs 7] [--sessions 8000]

A :class:`~smtpguard.core.session.Session` with the default policy is fed one
smtp-source-like session (HELO, MAIL, RCPT, DATA with a ~1 KB message, QUIT) and the
server's replies, ``--sessions`` times; prints microseconds per session for the
installed package (compiled by mypyc when it could be) and for ``src/`` as pure
Python, each in its own interpreter, in the same run.

``--against OTHER/src`` compares this tree's ``src/`` with another checkout's (say a
``git worktree`` of an older commit): ``--runs`` interleaved runs of each, compiled
if the tree holds a mypyc build (``python3 setup.py build_ext --inplace``), pure
Python if not; prints the median CPU time per session of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BODY = (
    b"From: <bench@example.org>\r\nTo: <sink@example.net>\r\n"
    b"Date: Sun, 29 Nov 2026 03:00:00 +0000\r\nMessage-Id: <1@example.org>\r\n"
    b"Subject: bench\r\n\r\n" + (b"x" * 70 + b"\r\n") * 12 + b".\r\n"
)
CLIENT = [
    b"HELO source.example.org\r\n",
    b"MAIL FROM:<bench@example.org>\r\n",
    b"RCPT TO:<sink@example.net>\r\n",
    b"DATA\r\n",
    BODY,
    b"QUIT\r\n",
]
SERVER = [
    b"250 sink\r\n",
    b"250 2.1.0 Ok\r\n",
    b"250 2.1.5 Ok\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"250 2.0.0 Ok: queued\r\n",
    b"221 2.0.0 Bye\r\n",
]


def run(sessions: int) -> None:
    """In this interpreter: time the sessions and print one line."""
    from smtpguard import core_build
    from smtpguard.core.policy import Policy
    from smtpguard.core.session import Session

    policy = Policy()

    try:
        from smtpguard.core.events import (
            ClientData,
            ClientEof,
            ServerConnected,
            ServerData,
            Start,
        )
    except ImportError:  # a core from before the event API (for before/after runs)

        def one() -> int:
            now = 1000.0
            s = Session(policy, peer=("127.0.0.1", 40000))
            n = len(s.start(now)) + len(s.server_connected(now))  # type: ignore[attr-defined]
            n += len(s.server_data(b"220 sink ESMTP\r\n", now))  # type: ignore[attr-defined]
            for c, r in zip(CLIENT, SERVER, strict=True):
                n += len(s.client_data(c, now))  # type: ignore[attr-defined]
                n += len(s.server_data(r, now))  # type: ignore[attr-defined]
            return n + len(s.client_eof(now))  # type: ignore[attr-defined]

    else:
        greeting = ServerData(b"220 sink ESMTP\r\n")
        client = [ClientData(c) for c in CLIENT]
        server = [ServerData(r) for r in SERVER]

        def one() -> int:
            now = 1000.0
            s = Session(policy, peer=("127.0.0.1", 40000))
            handle = s.handle
            n = len(handle(Start(), now)) + len(handle(ServerConnected(), now))
            n += len(handle(greeting, now))
            for c, r in zip(client, server, strict=True):
                n += len(handle(c, now)) + len(handle(r, now))
            return n + len(handle(ClientEof(), now))

    actions = one()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(sessions):
        one()
    us = (time.perf_counter() - start) / sessions * 1e6
    cpu_us = (time.process_time() - cpu) / sessions * 1e6
    print(
        f"{core_build():12s} {cpu_us:6.1f} us CPU/session ({us:.1f} us wall; "
        f"{actions} actions each)",
        flush=True,
    )


def child(src: Path, sessions: int) -> tuple[str, float]:
    """One run in a fresh interpreter importing smtpguard from ``src``: (build, CPU us)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    me = [sys.executable, __file__, "--child", "--sessions", str(sessions)]
    line = subprocess.run(me, check=True, cwd="/", env=env, capture_output=True, text=True).stdout
    build, _, rest = line.partition("  ")
    return build.strip(), float(rest.split()[0])


def against(other: Path, runs: int, sessions: int) -> None:
    """Interleaved runs of this tree and ``other``; medians and their ratio."""
    mine, theirs = ROOT / "src", other.resolve()
    times: dict[Path, list[float]] = {mine: [], theirs: []}
    builds: dict[Path, str] = {}
    for _ in range(runs):
        for src in (theirs, mine):
            builds[src], us = child(src, sessions)
            times[src].append(us)
    for src in (theirs, mine):
        runs_us = " ".join(f"{t:.1f}" for t in times[src])
        print(f"{builds[src]:12s} {statistics.median(times[src]):6.1f} us  {src}  ({runs_us})")
    ratio = statistics.median(times[mine]) / statistics.median(times[theirs])
    print(f"this tree / other: {ratio:.3f} (median of {runs} interleaved runs, CPU per session)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sessions", type=int, default=20000)
    ap.add_argument("--against", type=Path, help="another checkout's src/ to compare with")
    ap.add_argument("--runs", type=int, default=7, help="interleaved runs with --against")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run(args.sessions)
        return 0
    if args.against is not None:
        against(args.against, args.runs, args.sessions)
        return 0
    me = [sys.executable, __file__, "--child", "--sessions", str(args.sessions)]
    subprocess.run(me, check=True, cwd=ROOT)
    pure = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(me, check=True, cwd=ROOT, env=pure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
