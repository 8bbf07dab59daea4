"""Prometheus metrics for the gateway, correct across worker processes.

prometheus_client's multiprocess mode is used whatever the worker count: every
process writes its samples to memory-mapped files in one private directory
(``PROMETHEUS_MULTIPROC_DIR``), and the ``/metrics`` endpoint — a thread of the
parent process on its own listen address — adds them up at each scrape.

Lifecycle (docs/metrics.md has the full recipe for the serve command):

1. parent, before any fork: ``setup_metrics(listen, workers)`` (or ``setup()``),
   which picks a fresh directory and returns a ``PrometheusMetrics``;
2. parent, after forking (a thread must not be started before ``fork``):
   ``start_metrics_server(host, port)``; with one worker there is no fork and
   ``setup_metrics`` has already started it;
3. each worker passes a ``PrometheusMetrics`` to the gateway (the one inherited from
   the parent or a new one: values follow the process ID either way);
4. parent, when a worker exits: ``worker_exited(pid)`` drops its live gauge;
5. parent, at shutdown: ``cleanup(directory)``.

Counters survive a worker's exit (totals never go backwards); the open-sessions
gauge (``livesum``) counts live processes only.

The hooks only count, in plain dicts of the process; :meth:`PrometheusMetrics.flush`
adds the counts to the shared samples. A multiprocess sample update takes a lock and
writes a memory-mapped file, and a labelled one looks its child up first: done per
event, that cost more CPU than the rest of a session's bookkeeping. The gateway calls
``flush`` once a second and when it stops, so ``/metrics`` lags by at most a second.

prometheus_client is imported inside the functions that use it, never at the top:
it chooses its multiprocess value class when first imported, from
``PROMETHEUS_MULTIPROC_DIR``, which ``setup()`` sets first (and a gateway without
``--metrics-listen`` never loads it).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from typing import Any

from smtpguard.gateway.metrics import Metrics, SessionCounts
from smtpguard.netaddr import split_hostport

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
    """Point prometheus_client at a fresh multiprocess directory; returns it.

    Call before forking. Works even if prometheus_client was imported already: its
    value class is chosen from the environment at import, so it is re-chosen here.
    """
    path = tempfile.mkdtemp(prefix="smtpguard-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path


def setup_metrics(listen: str | None, workers: int) -> PrometheusMetrics | None:
    """Metrics for ``serve``: ``None`` when ``listen`` (``HOST:PORT``) is not set.

    Call once in the parent before forking. Prepares the shared directory and
    returns the ``PrometheusMetrics`` to hand to the gateway (valid in the parent and
    in every forked worker). With ``workers <= 1`` nothing forks, so the endpoint is
    started here; otherwise the parent calls ``start_metrics_server`` after forking.
    Raises ``OSError`` if the address cannot be listened on, before any fork.
    """
    if listen is None:
        return None
    host, port = parse_listen(listen)
    if workers > 1:
        probe = _bind_probe(host, port)
        probe.close()
    setup()
    metrics = PrometheusMetrics()
    if workers <= 1:
        start_metrics_server(host, port)
    return metrics


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all interfaces is not implied:
    an empty host means loopback, metrics are not for the internet)."""
    try:
        return split_hostport(listen, default_host="127.0.0.1")
    except ValueError as exc:
        raise ValueError(
            f"metrics listen address: expected HOST:PORT, got {listen!r}: {exc}"
        ) from None


def _bind_probe(host: str, port: int) -> Any:
    return socket.create_server((host, port))


def cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def start_metrics_server(host: str, port: int) -> Any:
    """Serve ``/metrics`` (all processes summed) from a daemon thread of this
    process; returns the HTTP server (``server_address``, ``shutdown()``)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        raise RuntimeError("start_metrics_server: call setup() (or setup_metrics) first")
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


serve = start_metrics_server  # the name gateway/cli.py uses


def worker_exited(pid: int) -> None:
    """In the parent, once a worker has exited: drop its live gauge samples."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid)  # type: ignore[no-untyped-call]


class PrometheusMetrics(Metrics):
    """The gateway's hooks, recorded as Prometheus metrics (created per process).

    Counts wait in the process until :meth:`flush` (see the module docstring).
    """

    def __init__(self) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        # In multiprocess mode the samples live in files that the endpoint's
        # collector reads: the metrics are not registered anywhere, so a process can
        # create this object more than once (reload, tests).
        multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        reg = None if multiprocess else REGISTRY
        self.sessions_open = Gauge(
            "smtpguard_sessions_open",
            "client sessions open",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.sessions = Counter("smtpguard_sessions", "client sessions accepted", registry=reg)
        self.refused = Counter(
            "smtpguard_sessions_refused", "client connections refused", ["reason"], registry=reg
        )
        self.commands = Counter(
            "smtpguard_commands",
            "client commands by verb and verdict",
            ["verb", "verdict"],
            registry=reg,
        )
        self.messages = Counter(
            "smtpguard_messages", "messages by outcome", ["result"], registry=reg
        )
        self.message_bytes = Counter(
            "smtpguard_message_bytes", "message data octets received from clients", registry=reg
        )
        self.events = Counter(
            "smtpguard_policy_events", "policy events by ID", ["id"], registry=reg
        )
        self.upstream_errors = Counter(
            "smtpguard_upstream_errors", "upstream connection errors", ["kind"], registry=reg
        )
        # Per upstream server ([gateway] upstream: labels come from the configuration).
        self.upstream_up = Gauge(
            "smtpguard_upstream_up",
            "1 while the upstream server is up, 0 while marked down (the lowest of the "
            "live workers)",
            ["upstream"],
            multiprocess_mode="livemin",
            registry=reg,
        )
        self.upstream_sessions = Counter(
            "smtpguard_upstream_sessions",
            "session connections the upstream server greeted with 220",
            ["upstream"],
            registry=reg,
        )
        self.upstream_failures = Counter(
            "smtpguard_upstream_failures",
            "connections to (and checks of) the upstream server that failed before its greeting",
            ["upstream"],
            registry=reg,
        )
        self.upstream_greeting = Counter(
            "smtpguard_upstream_greeting_seconds",
            "seconds from connect to the 220 greeting, summed over the sessions counted "
            "in smtpguard_upstream_sessions_total",
            ["upstream"],
            registry=reg,
        )
        self.latency = Histogram(
            "smtpguard_reply_latency_seconds",
            "time from a write to the server to its first reply bytes",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        # Pending counts of the rarer hooks, keyed by (metric, label values).
        self._pending: dict[tuple[Any, tuple[str, ...]], float] = {}
        # The per-session ones as plain numbers: the hooks run for every session.
        self._opened = 0
        self._closed = 0
        self._commands: dict[tuple[str, str], int] = {}
        self._relayed = 0
        self._refused_messages = 0
        self._octets = 0
        self._bounds: tuple[float, ...] = (*LATENCY_BUCKETS, float("inf"))
        self._latency_counts = [0] * len(self._bounds)
        self._latency_sum = 0.0
        # prometheus_client keeps a histogram's buckets as one value per bucket
        # (_buckets, not cumulative) plus _sum; adding a batch to them is what
        # observe() does one sample at a time. Should a release keep them otherwise,
        # each sample goes to observe() as it comes.
        buckets = getattr(self.latency, "_buckets", None)
        self._batch_latency = (
            isinstance(buckets, list)
            and len(buckets) == len(self._bounds)
            and hasattr(self.latency, "_sum")
        )

    def _add(self, metric: Any, labels: tuple[str, ...], n: float) -> None:
        key = (metric, labels)
        self._pending[key] = self._pending.get(key, 0) + n

    def flush(self) -> None:
        """Add the counts gathered since the last flush to the shared samples."""
        pending, self._pending = self._pending, {}
        opened, closed, self._opened, self._closed = self._opened, self._closed, 0, 0
        if opened:
            pending[(self.sessions, ())] = opened
        if opened != closed:
            pending[(self.sessions_open, ())] = opened - closed
        commands, self._commands = self._commands, {}
        for (verb, verdict), count in commands.items():
            key = (self.commands, (verb if verb in KNOWN_VERBS else "OTHER", verdict))
            pending[key] = pending.get(key, 0) + count
        totals: list[tuple[Any, tuple[str, ...], int]] = [
            (self.messages, ("relayed",), self._relayed),
            (self.messages, ("refused",), self._refused_messages),
            (self.message_bytes, (), self._octets),
        ]
        for counter, values, total in totals:
            if total:
                pending[(counter, values)] = total
        self._relayed = self._refused_messages = self._octets = 0
        for (metric, labels), n in pending.items():
            if n:
                (metric.labels(*labels) if labels else metric).inc(n)
        if self._latency_sum or any(self._latency_counts):
            hist: Any = self.latency
            hist._sum.inc(self._latency_sum)
            for i, hits in enumerate(self._latency_counts):
                if hits:
                    hist._buckets[i].inc(hits)
                    self._latency_counts[i] = 0
            self._latency_sum = 0.0

    def session_opened(self) -> None:
        self._opened += 1

    def session_refused(self, reason: str) -> None:
        self._add(self.refused, (reason,), 1)

    def session_closed(self, session: SessionCounts) -> None:
        self._closed += 1
        counts = self._commands  # verbs are the core's (Session.count): bounded
        for key, n in session.commands.items():
            counts[key] = counts.get(key, 0) + n
        self._relayed += session.messages_relayed
        self._refused_messages += session.messages_refused
        self._octets += session.message_octets

    def policy_event(self, event_id: str) -> None:
        self._add(self.events, (event_id,), 1)

    def upstream_error(self, kind: str) -> None:
        self._add(self.upstream_errors, (kind,), 1)

    def upstream_state(self, server: str, up: bool) -> None:
        self.upstream_up.labels(server).set(1 if up else 0)

    def upstream_session(self, server: str, seconds: float) -> None:
        self._add(self.upstream_sessions, (server,), 1)
        self._add(self.upstream_greeting, (server,), seconds)

    def upstream_failure(self, server: str) -> None:
        self._add(self.upstream_failures, (server,), 1)

    def reply_latency(self, seconds: float) -> None:
        if self._batch_latency:
            # The first bound >= seconds (bisect_left; the last bound is +Inf), walked
            # from the smallest: most replies fall in the first few buckets (0.5, 1,
            # 2.5 ms), and the walk is native where bisect_left is a generic call.
            bounds = self._bounds
            i = 0
            while bounds[i] < seconds:
                i += 1
            self._latency_counts[i] += 1
            self._latency_sum += seconds
        else:
            self.latency.observe(seconds)
