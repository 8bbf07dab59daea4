"""Prometheus metrics for the gateway, correct across worker processes.

prometheus_client's multiprocess mode is used whatever the worker count: every
process writes its samples to files in a private directory, and the ``/metrics``
endpoint (a thread of the parent process, on its own listen address) adds them up.
``setup`` must run before prometheus_client is imported anywhere and before the
workers fork; ``serve`` starts the endpoint once forking is done; ``worker_exited``
drops a finished worker's live gauges.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from smtpguard.gateway.metrics import Metrics

if TYPE_CHECKING:
    from smtpguard.core.session import Session

# Verb labels are limited to known commands: a client must not be able to create
# label values (and memory) at will.
KNOWN_VERBS = frozenset(
    {
        "HELO",
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "RSET",
        "NOOP",
        "QUIT",
        "VRFY",
        "EXPN",
        "HELP",
        "AUTH",
        "STARTTLS",
        "BDAT",
        "ETRN",
        "TURN",
        "XCLIENT",
        "XFORWARD",
        "XEXCH50",
    }
)
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def setup() -> str:
    """Point prometheus_client at a fresh multiprocess directory; returns it."""
    path = tempfile.mkdtemp(prefix="smtpguard-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def serve(host: str, port: int) -> Any:
    """Serve ``/metrics`` (all processes summed) from a daemon thread."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def worker_exited(pid: int) -> None:
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid)  # type: ignore[no-untyped-call]


class PrometheusMetrics(Metrics):
    """The gateway's hooks, recorded as Prometheus metrics (created per process)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.sessions_open = Gauge(
            "smtpguard_sessions_open", "client sessions open", multiprocess_mode="livesum"
        )
        self.sessions = Counter("smtpguard_sessions", "client sessions accepted")
        self.refused = Counter(
            "smtpguard_sessions_refused", "client connections refused", ["reason"]
        )
        self.commands = Counter(
            "smtpguard_commands", "client commands by verb and verdict", ["verb", "verdict"]
        )
        self.messages = Counter("smtpguard_messages", "messages by outcome", ["result"])
        self.message_bytes = Counter(
            "smtpguard_message_bytes", "message data octets received from clients"
        )
        self.events = Counter("smtpguard_policy_events", "policy events by ID", ["id"])
        self.upstream_errors = Counter(
            "smtpguard_upstream_errors", "upstream connection errors", ["kind"]
        )
        self.latency = Histogram(
            "smtpguard_reply_latency_seconds",
            "time from a write to the server to its first reply bytes",
            buckets=LATENCY_BUCKETS,
        )

    def session_opened(self) -> None:
        self.sessions.inc()
        self.sessions_open.inc()

    def session_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def session_closed(self, session: Session) -> None:
        self.sessions_open.dec()
        for (verb, verdict), n in session.commands.items():
            self.commands.labels(verb if verb in KNOWN_VERBS else "OTHER", verdict).inc(n)
        if session.messages_relayed:
            self.messages.labels("relayed").inc(session.messages_relayed)
        if session.messages_refused:
            self.messages.labels("refused").inc(session.messages_refused)
        if session.message_octets:
            self.message_bytes.inc(session.message_octets)

    def policy_event(self, event_id: str) -> None:
        self.events.labels(event_id).inc()

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.labels(kind).inc()

    def reply_latency(self, seconds: float) -> None:
        self.latency.observe(seconds)
