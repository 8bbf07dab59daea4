"""Store round trips of the ``rate-limit`` action, counted by Redis itself.

One gateway (Redis store) with two rate-limit checks that fire on purpose: a RCPT
check (``recipient_domains``, per client address) and a content check
(``to_cc_count``, counted at the final dot). ``--sessions`` sessions each send one
message that makes both fire, then as many sessions whose checks never fire;
``INFO commandstats`` before and after gives the round trips per session.

    python3 bench/rate_ops.py --sessions 200
"""

from __future__ import annotations

import argparse
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers import LOOPBACK, GatewayProcess, SmtpSink  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

from bench.state_bench import IN_SCRIPTS, commandstats  # noqa: E402

CHECKS = (
    '[checks.recipient_domains]\naction = "rate-limit"\npatterns = ["example\\\\.net"]\n'
    "rate = 100000000\nperiod = 3600.0\n"
    '[checks.to_cc_count]\naction = "rate-limit"\nlimit = 1\nrate = 100000000\nperiod = 3600.0\n'
)


def round_trips(redis: RedisServer, port: int, sessions: int, firing: bool) -> float:
    before = commandstats(redis)
    to = "b@example.net, c@example.net" if firing else "b@example.net"
    body = f"From: a@example.org\r\nTo: {to}\r\nSubject: r\r\n\r\nhi\r\n".encode()
    for _ in range(sessions):
        with smtplib.SMTP(LOOPBACK, port, timeout=20) as s:
            s.helo("bench.example.org")
            s.mail("a@example.org")
            s.rcpt("b@example.net")
            if firing:
                assert s.rcpt("x@elsewhere.test")[0] == 250
            assert s.data(body)[0] == 250
            s.quit()
    time.sleep(0.5)
    after = commandstats(redis)
    calls = sum(
        n - before.get(cmd, 0)
        for cmd, n in after.items()
        if cmd not in IN_SCRIPTS and cmd not in ("info", "incr")
    )
    return calls / sessions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=200)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="smtpguard-rate-ops-"))
    redis = RedisServer()
    sink = SmtpSink(workdir)
    cfg = workdir / "gw.toml"
    cfg.write_text(
        f'[gateway]\nupstream = "{sink.address}"\n[state]\nurl = "{redis.url}"\n{CHECKS}'
    )
    gw = GatewayProcess("--config", str(cfg), workdir=workdir)
    try:
        round_trips(redis, gw.port, 20, True)  # warm up: the first connection, scripts
        firing = round_trips(redis, gw.port, args.sessions, True)
        quiet = round_trips(redis, gw.port, args.sessions, False)
    finally:
        gw.stop()
        sink.stop()
        redis.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    print(f"Redis round trips per session ({args.sessions} sessions each, one message):")
    print(f"  RCPT check and content check fire: {firing:.2f}")
    print(f"  no check fires:                    {quiet:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
