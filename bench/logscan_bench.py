"""Scan a 1 GB synthetic Postfix maillog and report throughput and peak RSS.

    python bench/logscan_bench.py [--size-mb 1024] [--keep]

The log is written to /tmp (reused with --keep if it already has the requested
size; the generator's record of what it planted is kept next to it), then scanned
in a child process by ``smtpguard.logscan`` exactly as the CLI does; the child's
peak RSS comes from getrusage(RUSAGE_CHILDREN). The found duplicates and stalls
are compared with what the generator planted. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys
from smtpguard.logscan.scan import Options, Scanner
from smtpguard.logscan.source import Source
s = Scanner(Options(format="auto"))
src = Source(sys.argv[1])
s.scan(src)
src.close()
r = s.finish()
print(json.dumps({"counts": dict(r.counts), "deliveries": r.deliveries,
                  "lines": r.files[0].lines, "evicted_early": r.dedupe_evicted_early}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--path", default="/tmp/smtpguard-logscan-bench.maillog")
    ap.add_argument("--keep", action="store_true", help="keep the log afterwards")
    args = ap.parse_args()
    from smtpguard.logscan import synth

    path = Path(args.path)
    record = path.with_name(path.name + ".planted.json")
    want = args.size_mb * 1024 * 1024
    if not path.exists() or not record.exists() or abs(path.stat().st_size - want) > 1024 * 1024:
        t0 = time.perf_counter()
        with path.open("wb") as out:
            p = synth.write(out, want)
        planted = {
            "messages": p.messages,
            "lines": p.lines,
            "duplicate": len(p.duplicates),
            "stalled_data": len(p.stalls),
        }
        record.write_text(json.dumps(planted))
        print(
            f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    planted = json.loads(record.read_text())
    size = path.stat().st_size
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], check=True, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    found = json.loads(out.stdout)
    print(f"planted: {planted}")
    print(f"found:   {found}")
    ok = (
        found["counts"].get("duplicate", 0) == planted["duplicate"]
        and found["counts"].get("stalled_data", 0) == planted["stalled_data"]
        and found["deliveries"] == planted["messages"]
    )
    print("every planted duplicate and stall found" if ok else "MISMATCH with what was planted")
    print(
        f"scanned {size / 1e6:.0f} MB in {elapsed:.1f}s: {size / 1e6 / elapsed:.1f} MB/s, "
        f"peak RSS {peak_kb / 1024:.0f} MiB"
    )
    if not args.keep:
        os.unlink(path)
        record.unlink()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
