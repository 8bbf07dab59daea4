"""On-demand benchmark: instructions per message, two or more builds side by side.

    python3 bench/instructions.py SRC [SRC ...] [--mode esmtp] [--small 100]
                                  [--large 600] [--rounds 1] [--no-protocol-log]

Each SRC is a source tree (``src/`` of a worktree, built with ``python3 setup.py
build_ext --inplace`` for the compiled core, or not for the pure one). For every
round and every build, in turn: the gateway (``--workers 1``, the IMS protocol log
on, as bench/peers.py runs it) in front of its own ``smtp-sink`` is started under
``valgrind --tool=callgrind``, ``smtp-source -s 5 -l 1000`` sends ``--small`` and
then, in a fresh process, ``--large`` messages, and the gateway is stopped. The
figure is ``(Ir(large) - Ir(small)) / (large - small)``: the instructions the whole
process spends per message, start-up and shut-down cancelled out.

Instruction counts do not move with other jobs on a shared machine the way times
do: this is the figure to compare two builds by when the machine is busy. Every
message must reach the sink, or the run fails.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import LOOPBACK, free_port, message_rate, need

from peers import Sink, gateway_build, gateway_env, launch


def instructions(src: str, mode: str, messages: int, workdir: Path, log: bool) -> int:
    """Ir of one gateway process that relayed ``messages`` messages."""
    sink = Sink(workdir, f"{len(list(workdir.iterdir()))}")
    port = free_port()
    out = workdir / f"callgrind.{port}"
    cmd = [need("valgrind"), "--tool=callgrind", f"--callgrind-out-file={out}"]
    cmd += [sys.executable, "-m", "smtpguard", "serve", "--listen", f"{LOOPBACK}:{port}"]
    cmd += ["--upstream", f"{LOOPBACK}:{sink.port}", "--mode", mode, "--workers", "1"]
    cmd += ["--hostname", "bench.localhost", "--max-sessions", "20000"]
    if log:
        cmd += ["--protocol-log", str(workdir / f"gw.{port}.log"), "--protocol-log-format", "ims"]
    proc = launch(cmd, port, workdir / f"gw.{port}.err", env=gateway_env(src), timeout=300)
    try:
        message_rate(port, messages, 5, 1000)
        sink.expected = messages
        sink.check(f"{src} ({messages})", wait=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
        sink.proc.terminate()
        sink.proc.wait(10)
    text = out.read_text(errors="replace")
    found = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError(f"{out}: no totals line")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", nargs="+", help="source trees (src/ directories) to compare")
    ap.add_argument("--mode", default="esmtp", choices=("mailguard", "esmtp"))
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-protocol-log", action="store_true")
    args = ap.parse_args()
    if args.large <= args.small:
        ap.error("--large must be more than --small")
    per: dict[str, list[float]] = {src: [] for src in args.src}
    with tempfile.TemporaryDirectory(prefix="sg-ir-") as tmp:
        workdir = Path(tmp)
        for r in range(args.rounds):
            order = args.src if r % 2 == 0 else list(reversed(args.src))
            for src in order:
                small = instructions(src, args.mode, args.small, workdir, not args.no_protocol_log)
                large = instructions(src, args.mode, args.large, workdir, not args.no_protocol_log)
                per[src].append((large - small) / (args.large - args.small))
                print(f"round {r + 1} {src}: {per[src][-1] / 1000:.1f}k instructions/message")
    base = statistics.median(per[args.src[0]])
    print(f"\n{args.mode}, one worker, smtp-source -s 5 -l 1000, ({args.large} - {args.small})")
    for src in args.src:
        ir = statistics.median(per[src])
        build = gateway_build(gateway_env(src))
        print(f"  {src:40} {build:10} {ir / 1000:8.1f}k  ({(ir / base - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    subprocess.run([need("valgrind"), "--version"], check=True, capture_output=True)
    sys.exit(main())
