"""On-demand benchmark: the gateway against baselines measured in the same run.

    python3 bench/run.py [--messages 10000] [--sessions 20] [--size 1000] [--rounds 3]
                         [--big-mb 100] [--big-parts N] [--mode mailguard]

1. Message rate: ``smtp-source -s 20 -m 10000 -l 1000`` straight to ``smtp-sink``,
   through HAProxy in TCP mode, and through the gateway, interleaved over several
   rounds; the median of each is reported and the gateway is given as a ratio.
2. One big message (100 MB by default) relayed through HAProxy and through the
   gateway: throughput ratio, and the gateway's RSS growth (VmHWM minus the RSS after
   a warm-up message).

Only loopback addresses are used. Absolute numbers drift on a shared machine; the
ratios are what to compare.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers import LOOPBACK, free_port, need, wait_port  # noqa: E402

HAPROXY_CFG = """\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend smtp
    bind {host}:{port}
    default_backend sink
backend sink
    server sink {host}:{upstream}
"""


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [need("smtp-sink"), *user, "-m", "1000", f"{LOOPBACK}:{port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc, port


def start_haproxy(upstream: int, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(host=LOOPBACK, port=port, upstream=upstream))
    proc = subprocess.Popen(
        [need("haproxy"), "-db", "-f", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc, port


def start_gateway(
    upstream: int,
    mode: str,
    workers: int = 1,
    metrics: int | None = None,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "smtpguard",
        "serve",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--upstream",
        f"{LOOPBACK}:{upstream}",
        "--mode",
        mode,
        "--max-sessions",
        "5000",
        "--workers",
        str(workers),
    ]
    if metrics is not None:
        cmd += ["--metrics-listen", f"{LOOPBACK}:{metrics}"]
    cmd += extra  # later flags override the ones above
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port, proc)
    return proc, port


def message_rate(port: int, messages: int, sessions: int, size: int) -> float:
    """Messages per second for one smtp-source run."""
    start = time.perf_counter()
    out = subprocess.run(
        [
            need("smtp-source"),
            "-s",
            str(sessions),
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
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source failed on port {port}: {out.stderr.strip()}")
    return messages / elapsed


def _reply(sock: socket.socket) -> bytes:
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
        last = buf.rstrip(b"\r\n").split(b"\r\n")[-1]
        if buf.endswith(b"\r\n") and (len(last) == 3 or last[3:4] == b" "):
            return buf


def big_message(megabytes: int, parts_per_mb: int = 0) -> Iterator[bytes]:
    """The big message's data, in pieces of about 1 MB, without the final dot.

    A realistic big message: headers, then MIME attachments in base64 lines, so the
    content checks (header, MIME boundary and body line scans) do their work. With
    ``parts_per_mb``, each megabyte is a nested ``multipart/mixed`` of that many
    parts, each with its own header block and RFC 2231 file names (continuations
    and a percent-encoded UTF-8 one): the MIME reader's worst realistic load.
    """
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    block = line * (1024 * 1024 // len(line))
    yield (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: big\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
    )
    attachment = (
        b'Content-Type: application/octet-stream; name*0="part"; name*1="%d.bin"\r\n'
        b"Content-Disposition: attachment;\r\n filename*=utf-8''p%%C3%%A4rt%%20%d.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    if not parts_per_mb:  # one attachment, as every earlier run had it
        yield (
            b"--B\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="big.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
        )
        for _ in range(megabytes):
            yield block
        yield b"--B--\r\n"
        return
    lines = block.count(b"\n")
    per_part = line * max(1, lines // parts_per_mb)
    for mb in range(megabytes):
        inner = b"C%d" % mb
        out = [b'--B\r\nContent-Type: multipart/mixed; boundary="' + inner + b'"\r\n\r\n']
        for n in range(parts_per_mb):
            out.append(b"--" + inner + b"\r\n" + attachment % (n, n) + per_part)
        out.append(b"--" + inner + b"--\r\n")
        yield b"".join(out)
    yield b"--B--\r\n"


def send_big(port: int, megabytes: int, parts_per_mb: int = 0) -> float:
    """Relay one message of ``megabytes`` MB; returns MB/s from DATA to final reply."""
    size = 0
    with socket.create_connection((LOOPBACK, port), 30) as s:
        s.settimeout(300)
        _reply(s)
        for cmd in (
            b"HELO bench",
            b"MAIL FROM:<a@example.org>",
            b"RCPT TO:<b@example.net>",
            b"DATA",
        ):
            s.sendall(cmd + b"\r\n")
            _reply(s)
        start = time.perf_counter()
        for piece in big_message(megabytes, parts_per_mb):
            s.sendall(piece)
            size += len(piece)
        s.sendall(b".\r\n")
        final = _reply(s)
        elapsed = time.perf_counter() - start
        if not final.startswith(b"250"):
            raise RuntimeError(f"big message refused: {final!r}")
        s.sendall(b"QUIT\r\n")
    return size / 1e6 / elapsed


def scrape_relayed(port: int) -> float:
    """smtpguard_messages_total{result="relayed"} from a gateway's /metrics."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'^smtpguard_messages_total\{result="relayed"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument(
        "--big-parts",
        type=int,
        default=0,
        help="make each MB of the big message a nested multipart of this many parts",
    )
    ap.add_argument(
        "--gateways",
        default="mailguard:1",
        help="comma-separated MODE:WORKERS variants measured in the same run, "
        "e.g. mailguard:1,mailguard:2,esmtp:1 (the first is the reference)",
    )
    args = ap.parse_args()
    variants = [(m, int(w)) for m, _, w in (v.partition(":") for v in args.gateways.split(","))]

    workdir = Path(tempfile.mkdtemp(prefix="smtpguard-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink, sink_port = start_sink()
        procs.append(sink)
        hap, hap_port = start_haproxy(sink_port, workdir)
        procs.append(hap)
        targets = {"direct": sink_port, "haproxy": hap_port}
        metrics_ports: dict[str, int] = {}
        for mode, workers in variants:
            mport = free_port()
            gw, gw_port = start_gateway(sink_port, mode, workers, mport)
            procs.append(gw)
            name = f"gateway-{mode}-w{workers}"
            targets[name] = gw_port
            metrics_ports[name] = mport
            message_rate(gw_port, 200, args.sessions, args.size)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for r in range(args.rounds):
            for name, port in targets.items():
                rate = message_rate(port, args.messages, args.sessions, args.size)
                rates[name].append(rate)
                print(f"round {r + 1}: {name:22s} {rate:8.0f} msg/s", flush=True)
        med = {name: statistics.median(v) for name, v in rates.items()}
        print(
            f"\nmessage rate (smtp-source -s {args.sessions} -m {args.messages} "
            f"-l {args.size}), median of {args.rounds} rounds:"
        )
        gw_names = [n for n in med if n.startswith("gateway-")]
        for name, v in med.items():
            extra = ""
            if name in gw_names:
                extra = (
                    f"  = {v / med['haproxy']:.2f}x haproxy, {v / med['direct']:.2f}x direct,"
                    f" {v / med[gw_names[0]]:.2f}x {gw_names[0]}"
                )
            print(f"  {name:22s} {v:8.0f} msg/s{extra}")

        sent = 200 + args.rounds * args.messages
        print(f"\n/metrics after the run ({sent} messages sent to each gateway):")
        for name, mport in metrics_ports.items():
            # Workers publish their counts once a second: allow a few seconds.
            deadline = time.monotonic() + 5
            relayed = scrape_relayed(mport)
            while relayed != sent and time.monotonic() < deadline:
                time.sleep(0.2)
                relayed = scrape_relayed(mport)
            print(
                f'  {name:22s} smtpguard_messages_total{{result="relayed"}} = {relayed:.0f}'
                f"  {'(matches)' if relayed == sent else '(MISMATCH)'}"
            )

        if args.big_mb:
            for p in procs[2:]:
                stop(p)
            mode, workers = variants[0]
            gw, gw_port = start_gateway(sink_port, mode, 1)
            procs.append(gw)
            parts = args.big_parts
            send_big(gw_port, 1, parts)  # warm-up: buffers and code paths in place
            base = rss_kib(gw.pid, "VmRSS")
            hap_mbs = send_big(hap_port, args.big_mb, parts)
            gw_mbs = send_big(gw_port, args.big_mb, parts)
            peak = rss_kib(gw.pid, "VmHWM")
            shape = f", {parts * args.big_mb + args.big_mb} MIME parts" if parts else ""
            print(f"\none {args.big_mb} MB message ({mode} mode, 1 worker{shape}):")
            print(f"  haproxy  {hap_mbs:8.1f} MB/s")
            print(f"  gateway  {gw_mbs:8.1f} MB/s  = {gw_mbs / hap_mbs:.2f}x haproxy")
            print(
                f"  gateway RSS after warm-up {base / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB,"
                f" growth {(peak - base) / 1024:.1f} MiB"
            )
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
