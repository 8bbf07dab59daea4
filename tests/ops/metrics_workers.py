"""Forked workers feeding PrometheusMetrics, for tests/ops/test_metrics_prom.py.

Run as ``python -m tests.ops.metrics_workers``: its own process, because the
multiprocess setup is process-wide (environment, prometheus_client's value class).
The parent prepares metrics exactly as ``serve`` does before forking, forks worker A
(stays alive with one session open) and worker B (exits), starts the endpoint on a
free loopback port and prints ``port N``. On the line ``exit-a`` it ends worker A,
reaps it and prints ``a-exited``; on end of input it cleans up and exits.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import Any

from smtpguard.gateway import metrics_prom


def fake_session(relayed: int, refused: int, octets: int) -> Any:
    return SimpleNamespace(
        messages_relayed=relayed,
        messages_refused=refused,
        commands_refused=1,
        message_octets=octets,
        commands={
            ("HELO", "forwarded"): 1,
            ("MAIL", "forwarded"): relayed + refused,
            ("VRFY", "refused"): 1,
            ("X-EVIL-VERB", "refused"): 1,  # counted as OTHER, never as a new label
        },
    )


def worker_a(metrics: metrics_prom.PrometheusMetrics, ready: int, go: int) -> None:
    for _ in range(3):
        metrics.session_opened()
    for _ in range(2):
        metrics.session_closed(fake_session(relayed=2, refused=1, octets=1000))
    metrics.policy_event("SG-CMD-BLOCKED")
    metrics.upstream_error("connect")
    metrics.reply_latency(0.002)
    metrics.flush()
    os.write(ready, b"r")
    os.read(go, 1)  # one session still open until the parent says so


def worker_b(metrics: metrics_prom.PrometheusMetrics) -> None:
    metrics = metrics_prom.PrometheusMetrics()  # a worker may also make its own
    for _ in range(2):
        metrics.session_opened()
        metrics.session_closed(fake_session(relayed=1, refused=0, octets=500))
    metrics.session_refused("max-sessions")
    metrics.policy_event("SG-CMD-BLOCKED")
    metrics.reply_latency(0.2)
    metrics.flush()


def fork(run: Any, *args: Any) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run(*args)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def main() -> int:
    metrics = metrics_prom.setup_metrics("127.0.0.1:0", workers=2)
    assert metrics is not None
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    pid_a = fork(worker_a, metrics, ready_w, go_r)
    pid_b = fork(worker_b, metrics)
    assert os.waitpid(pid_b, 0)[1] == 0
    metrics_prom.worker_exited(pid_b)
    assert os.read(ready_r, 1) == b"r"  # worker A has recorded everything
    server = metrics_prom.start_metrics_server("127.0.0.1", 0)
    print("port", server.server_address[1], flush=True)
    for line in sys.stdin:
        if line.strip() == "exit-a":
            os.write(go_w, b"x")
            assert os.waitpid(pid_a, 0)[1] == 0
            metrics_prom.worker_exited(pid_a)
            print("a-exited", flush=True)
    server.shutdown()
    metrics_prom.cleanup(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
