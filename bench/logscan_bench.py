"""Scan a 1 GB synthetic Postfix maillog and report throughput and peak RSS.

    python bench/logscan_bench.py [--size-mb 1024] [--keep]

The log is written to /tmp (reused if it already has the requested size), then
scanned in a child process by ``smtpguard.logscan`` exactly as the CLI does; the
child's peak RSS comes from getrusage(RUSAGE_CHILDREN). Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import sys
from smtpguard.logscan.scan import Options, Scanner
from smtpguard.logscan.source import Source
s = Scanner(Options(format="auto"))
src = Source(sys.argv[1])
s.scan(src)
src.close()
r = s.finish()
print(dict(r.counts), r.deliveries, r.files[0].lines)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--path", default="/tmp/smtpguard-logscan-bench.maillog")
    ap.add_argument("--keep", action="store_true", help="keep the log afterwards")
    args = ap.parse_args()
    from smtpguard.logscan import synth

    path = Path(args.path)
    want = args.size_mb * 1024 * 1024
    if not path.exists() or abs(path.stat().st_size - want) > 1024 * 1024:
        t0 = time.perf_counter()
        with path.open("wb") as out:
            synth.write(out, want)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
    size = path.stat().st_size
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], check=True,
                         capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"result: {out.stdout.strip()}")
    print(f"scanned {size / 1e6:.0f} MB in {elapsed:.1f}s: {size / 1e6 / elapsed:.1f} MB/s, "
          f"peak RSS {peak_kb / 1024:.0f} MiB")
    if not args.keep:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
