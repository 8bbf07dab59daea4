"""The listening gateway: accepts clients, opens upstreams, caps sessions, drains.

Theory of operation: :class:`Gateway` owns the policy, the access control, the
protocol log, the session table and counters. Each accepted socket gets a
:class:`~smtpguard.gateway.connection.ClientConnection`; :meth:`Gateway.admit` decides
whether it may start (session cap, client networks, per-address caps), the core
decides everything else. A drain (SIGTERM, Ctrl-C) stops accepting, asks every
session to finish its transaction and say 421, and waits up to the grace period or
until a second stop signal; then it *cuts* what is left: each client is told
``421 4.3.2`` in place of the reply still owed (never a 2xx the server has not
sent), both sides are closed, and upstream connects still under way are cancelled.

Upstream connects are tasks of their own, bounded by the session's connect timeout
and cancelled as soon as the session gives the connection up, so an abandoned
connect never outlives its session. Each goes to the server the
:class:`~smtpguard.gateway.upstreams.UpstreamPool` picks (``upstream_policy``,
skipping servers that are down and those the session already tried); the core's
:class:`~smtpguard.core.actions.ServerOutcome` for it feeds the pool's health
(:meth:`Gateway.upstream_outcome`), as do the active checks
(:mod:`~smtpguard.gateway.healthcheck`) when ``upstream_check_interval`` is set.
With no server left to try, the connect fails at once and the client gets
``421 4.4.1`` without waiting.

SIGHUP re-opens the protocol log (after a logrotate that renamed it) and then
reloads the configuration; SIGUSR1 only re-opens the protocol log. Either logs
what it re-opened.

Reload (SIGHUP) calls the ``reloader`` the CLI installed; on success the new policy,
access settings and upstream servers are swapped in for sessions that start (or
upstream connections that open) afterwards. A session keeps the :class:`Policy`
object it was created with and its open connection, so sessions in flight are
neither dropped nor changed. An invalid file is refused and the old settings kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from mypy_extensions import mypyc_attr

from smtpguard.config.events import CONFIG_NEEDS_RESTART, CONFIG_REFUSED, CONFIG_RELOADED
from smtpguard.config.schema import GatewaySection
from smtpguard.core.actions import PolicyEvent
from smtpguard.core.grammar import make_reply
from smtpguard.core.policy import Balance, Policy, Smuggling
from smtpguard.core.session import Session
from smtpguard.gateway import lifecycle
from smtpguard.gateway.access import (
    AccessControl,
    AccessPolicy,
    Refusal,
    SharedLimits,
    parse_ip,
    peer_ip,
)
from smtpguard.gateway.connection import ClientConnection
from smtpguard.gateway.healthcheck import HealthChecks
from smtpguard.gateway.metrics import Metrics
from smtpguard.gateway.sessionid import SessionIds
from smtpguard.gateway.sessionlog import log_session
from smtpguard.gateway.tls import TlsContexts
from smtpguard.gateway.upstreamconn import UpstreamConnection
from smtpguard.gateway.upstreams import (
    UPSTREAM_DOWN,
    UPSTREAM_UP,
    Address,
    Change,
    Health,
    UpstreamPool,
    show,
)
from smtpguard.gateway.workers import CUT_SIGNAL
from smtpguard.logs import ProtocolLog
from smtpguard.proxyproto import ProxyVersion
from smtpguard.state.dedupe import Dedupe
from smtpguard.state.passes import Passes
from smtpguard.state.ratelimit import RateLimits

log = logging.getLogger("smtpguard.gateway")

# Seconds between publishing the metrics counted in the process (see metrics.py).
METRICS_FLUSH = 1.0
# Seconds the sessions cut at the end of a drain have to flush their 421 and close
# before their clients are reset (a client that reads nothing holds its close).
CUT_FLUSH = 1.0
TOO_MANY_SESSIONS = make_reply(421, "4.3.2 Too many sessions, try again later").raw
# The session cap's refusal: counted and logged as a reason, not a policy event.
TOO_MANY = Refusal("", "", TOO_MANY_SESSIONS, "drop", "max-sessions")


# The schema's defaults for the [gateway] keys GatewayConfig carries (one place).
_DEFAULTS = GatewaySection()


@dataclass
class Stats:
    sessions_total: int = 0
    sessions_refused: int = 0
    policy_events: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 2525
    upstream_host: str = "127.0.0.1"
    upstream_port: int = 25
    # Several upstream servers ([gateway] upstream); empty: upstream_host:upstream_port.
    upstreams: tuple[Address, ...] = ()
    # The [gateway] keys of the same names (reload.gateway_fields); their defaults are
    # the schema's, for the gateways tests and the built-in default build directly.
    max_sessions: int = _DEFAULTS.max_sessions
    drain_grace: float = _DEFAULTS.drain_grace
    listen_backlog: int = _DEFAULTS.listen_backlog
    upstream_policy: Balance = _DEFAULTS.upstream_policy
    upstream_check_interval: float = _DEFAULTS.upstream_check_interval
    upstream_fail_limit: int = _DEFAULTS.upstream_fail_limit
    upstream_backoff: float = _DEFAULTS.upstream_backoff

    @property
    def servers(self) -> tuple[Address, ...]:
        return self.upstreams or ((self.upstream_host, self.upstream_port),)


@dataclass(frozen=True)
class Reload:
    """What a successful reload hands the gateway; ``needs_restart`` names changed
    settings that cannot be applied to a running process."""

    policy: Policy
    access: AccessPolicy
    max_sessions: int
    drain_grace: float
    upstream_policy: Balance = _DEFAULTS.upstream_policy
    upstream_check_interval: float = _DEFAULTS.upstream_check_interval
    upstream_fail_limit: int = _DEFAULTS.upstream_fail_limit
    upstream_backoff: float = _DEFAULTS.upstream_backoff
    upstreams: tuple[Address, ...] = ()  # empty: keep the running list
    needs_restart: tuple[str, ...] = ()


# Log-only IDs (documented in docs/events.md): a reload applied, a reload refused.


class Conn(Protocol):
    """What the gateway uses of a client connection (:class:`ClientConnection`).

    A Protocol rather than the class: this module is compiled with the connection's
    (setup.py), and a parameter typed with a compiled class is checked at every call
    from Python, where tests and the shared limits hand the gateway stand-ins.
    """

    sid: str
    peer: str
    opened_at: float

    @property
    def transport(self) -> asyncio.Transport | None: ...
    @property
    def session(self) -> Session | None: ...
    def admitted(self) -> None: ...
    def shutdown(self) -> None: ...
    def cut(self) -> None: ...
    def abort(self) -> None: ...


# Interpreted subclasses allowed: tests replace a method of one gateway (the
# upstream connect) on an instance of a subclass of their own.
@mypyc_attr(allow_interpreted_subclasses=True)
class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        policy: Policy,
        protocol_log: ProtocolLog | None = None,
        metrics: Metrics | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self.config = config
        self.protocol_log = protocol_log
        self.metrics = metrics or Metrics()
        self.access = AccessControl(access or AccessPolicy())
        # Set by the CLI when a rule needs the shared store ([state], [dedupe]).
        self.limits: SharedLimits | None = None
        self.dedupe: Dedupe | None = None
        self.rates: RateLimits | None = None
        self.passes: Passes | None = None  # the greeting wait's pass cache
        self.tls: TlsContexts | None = None  # set by the CLI when TLS is configured
        self.upstream_proxy = ProxyVersion.OFF  # the PROXY header towards the server
        # No shared store yet: set_policy turns shared_rates on once one is attached.
        if policy.shared_rates:
            policy = dataclasses.replace(policy, shared_rates=False)
        self.policy = policy
        self._normalized = self._derive_normalized(policy)
        # Set by the CLI when there is a config file: returns a Reload or raises
        # ConfigError (one line) when the file is invalid.
        self.reloader: Callable[[], Reload] | None = None
        self.loop = asyncio.get_running_loop()
        self.sessions: set[Conn] = set()
        self.stats = Stats()
        self._ids = SessionIds()
        self._server: asyncio.AbstractServer | None = None
        self._tls_server: asyncio.AbstractServer | None = None
        self._connects: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut = asyncio.Event()  # a second stop signal: end the drain now
        self._metrics_timer: asyncio.TimerHandle | None = None
        if metrics is not None:
            self._metrics_timer = self.loop.call_later(METRICS_FLUSH, self._flush_metrics)
        self.pool = UpstreamPool(
            config.servers,
            config.upstream_policy,
            config.upstream_fail_limit,
            config.upstream_backoff,
            config.upstream_check_interval > 0,
        )
        self.checks: HealthChecks | None = None
        self._start_checks()
        self.policy = self._with_tries(self.policy)
        self._normalized = self._derive_normalized(self.policy)
        for server in self.pool.servers:
            self.metrics.upstream_state(server.name, True)

    def _flush_metrics(self) -> None:
        # Re-armed first: a failing flush is reported by the loop and tried again.
        self._metrics_timer = self.loop.call_later(METRICS_FLUSH, self._flush_metrics)
        self.metrics.flush()

    def next_session_id(self) -> str:
        return self._ids.next()

    async def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen (on ``sock`` if given); returns the bound address."""
        if sock is not None:
            # The backlog again: asyncio listens on a given socket once more (100).
            server = await self.loop.create_server(
                lambda: ClientConnection(self), sock=sock, backlog=self.config.listen_backlog
            )
        else:
            server = await self.loop.create_server(
                lambda: ClientConnection(self),
                self.config.listen_host,
                self.config.listen_port,
                reuse_address=True,
                backlog=self.config.listen_backlog,
            )
        self._server = server
        # Read untyped: typeshed says a tuple, uvloop's is a list, and the compiled
        # module would check the declared type.
        sock = cast(Any, server).sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    async def start_implicit_tls(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        """Also accept clients that speak TLS from the first byte (RFC 8314)."""
        self._tls_server = await self.loop.create_server(
            lambda: ClientConnection(self, tls_listener=True),
            sock=sock,
            backlog=self.config.listen_backlog,
            ssl=ctx,
            ssl_handshake_timeout=30.0,
        )

    # -- policy ----------------------------------------------------------------------
    def policy_for(self, peer_ip: str) -> Policy:
        """The policy for a new session from ``peer_ip`` (an address, no port):
        clients in ``access.normalize_networks`` get ``smuggling = normalize``."""
        if self.access.policy.normalize_networks and self.access.policy.normalizes(
            parse_ip(peer_ip)
        ):
            return self._normalized
        return self.policy

    def set_policy(self, policy: Policy, access: AccessPolicy | None = None) -> None:
        """Use ``policy`` (and ``access``) for sessions that start from now on. With
        a shared store for them, sessions count rate limits there (``shared_rates``);
        without (a reload that adds a rate-limit check), per session."""
        shared = self.rates is not None
        if policy.shared_rates is not shared:
            policy = dataclasses.replace(policy, shared_rates=shared)
        self.policy = policy = self._with_tries(policy)
        self._normalized = self._derive_normalized(policy)
        if access is not None:
            self.access.policy = access

    def _with_tries(self, policy: Policy) -> Policy:
        """``policy`` with one upstream try per server of the pool."""
        tries = len(self.pool.servers)
        if policy.upstream_tries == tries:
            return policy
        return dataclasses.replace(policy, upstream_tries=tries)

    @staticmethod
    def _derive_normalized(policy: Policy) -> Policy:
        if policy.smuggling is Smuggling.NORMALIZE:
            return policy
        return dataclasses.replace(policy, smuggling=Smuggling.NORMALIZE)

    def reload(self) -> bool:
        """Re-read the configuration (SIGHUP). False, old settings kept, if invalid."""
        from smtpguard.errors import ConfigError

        if self.reloader is None:
            log.warning(
                "%s reload requested, but the gateway runs without a config file",
                CONFIG_REFUSED,
                extra={"event": CONFIG_REFUSED},
            )
            return False
        try:
            new = self.reloader()
        except ConfigError as exc:
            log.error(
                "%s reload refused (pid %d), previous configuration kept: %s",
                CONFIG_REFUSED,
                os.getpid(),
                exc,
                extra={"event": CONFIG_REFUSED},
            )
            return False
        self.config = dataclasses.replace(
            self.config,
            max_sessions=new.max_sessions,
            drain_grace=new.drain_grace,
            upstreams=new.upstreams or self.config.upstreams,
            upstream_policy=new.upstream_policy,
            upstream_check_interval=new.upstream_check_interval,
            upstream_fail_limit=new.upstream_fail_limit,
            upstream_backoff=new.upstream_backoff,
        )
        self.set_upstreams()
        self.set_policy(new.policy, new.access)
        restart = list(new.needs_restart)
        if restart:
            log.warning(
                "%s changed settings need a restart to apply: %s",
                CONFIG_NEEDS_RESTART,
                ", ".join(restart),
                extra={"event": CONFIG_NEEDS_RESTART, "needs_restart": restart},
            )
        log.warning(
            "%s configuration reloaded (pid %d); new sessions use it",
            CONFIG_RELOADED,
            os.getpid(),
            extra={"event": CONFIG_RELOADED, "needs_restart": restart},
        )
        return True

    # -- sessions --------------------------------------------------------------------
    def admit(self, conn: Conn) -> bool | None:
        """Register a new session, or refuse it: 421 at the session cap, then the
        access rules (554 for a denied network, 421 per-address caps). A refused
        connection gets its reply, is closed and never reaches the upstream. None:
        the shared store decides, then calls :meth:`register` and ``conn.admitted()``
        or refuses (access.SharedLimits)."""
        if len(self.sessions) >= self.config.max_sessions:
            self.refuse(conn, TOO_MANY)
            return False
        refusal = self.access.admit(peer_ip(conn.peer), self.loop.time())
        if refusal is not None:
            self.refuse(conn, refusal)
            return False
        if self.limits is not None and self.limits.needed:
            self.limits.admit(self, conn)
            return None
        self.register(conn)
        return True

    def refuse(self, conn: Conn, refusal: Refusal) -> None:
        """Tell a client it may not start and close: counted, logged (if the refusal
        names an event), never registered. Here or once the shared store decided."""
        self.stats.sessions_refused += 1
        self.metrics.session_refused(refusal.reason)
        if refusal.event_id:
            self.policy_event(
                conn.sid, conn.peer, PolicyEvent(refusal.event_id, refusal.message, refusal.action)
            )
        t = conn.transport
        if t is not None:
            t.write(refusal.reply)
            t.close()

    def register(self, conn: Conn) -> None:
        """Count an admitted session until :meth:`release`."""
        self.sessions.add(conn)
        self._idle.clear()
        self.stats.sessions_total += 1
        self.metrics.session_opened()

    def release(self, conn: Conn) -> None:
        if self.limits is not None:  # also a session the store has not answered for yet
            self.limits.release(conn.sid)
        if conn in self.sessions:
            self.sessions.discard(conn)
            self.access.release(peer_ip(conn.peer))
            if conn.session is not None:
                self.metrics.session_closed(conn.session)
                log_session(conn.sid, conn.peer, conn.session, self.loop.time() - conn.opened_at)
            if self.protocol_log is not None:
                self.protocol_log.disconnect(conn.sid)
        if not self.sessions:
            self._idle.set()

    # -- upstream servers ------------------------------------------------------------
    def set_upstreams(self) -> None:
        """Apply the configuration's upstream list and health settings (start, reload):
        servers kept keep their health; connections open stay where they are."""
        config = self.config
        old = {s.address for s in self.pool.servers}
        self.pool.replace(
            config.servers,
            config.upstream_policy,
            config.upstream_fail_limit,
            config.upstream_backoff,
            config.upstream_check_interval > 0,
        )
        for server in self.pool.servers:
            if server.address not in old:
                self.metrics.upstream_state(server.name, server.health is Health.UP)
        if self.checks is not None:
            self.checks.stop()
            self.checks = None
        self._start_checks()

    def _start_checks(self) -> None:
        interval = self.config.upstream_check_interval
        if interval > 0:
            timeout = self.policy.timeouts.connect
            self.checks = HealthChecks(
                self.pool, interval, timeout, self.upstream_outcome, self.loop
            )
            self.checks.start()

    def upstream_outcome(
        self, address: Address, ok: bool, why: str, latency: float | None, session: bool = True
    ) -> None:
        """How a connection to (or a check of) ``address`` turned out: the server's
        health and metrics; a change of state is logged as SG-UPSTREAM-DOWN / -UP."""
        now = self.loop.time()
        server = self.pool.find(address)
        name = server.name if server is not None else show(address)  # made once
        if ok:
            change = self.pool.succeeded(address, now, latency, session)
            if session and latency is not None:
                self.metrics.upstream_session(name, latency)
        else:
            change = self.pool.failed(address, now, why)
            self.metrics.upstream_failure(name)
            log.info("upstream %s failed%s: %s", name, "" if session else " its check", why)
        if change is not None:
            self._health_changed(change)

    def _health_changed(self, change: Change) -> None:
        server = change.server
        up = change.health is Health.UP
        event = UPSTREAM_UP if up else UPSTREAM_DOWN
        self.metrics.upstream_state(server.name, up)
        self.metrics.policy_event(event)
        if up:
            log.warning("%s upstream %s is up: %s", event, server.name, change.why)
        else:
            log.warning(
                "%s upstream %s is down for %gs: %s",
                event,
                server.name,
                self.pool.backoff,
                change.why,
            )

    def open_upstream(self, up: UpstreamConnection) -> None:
        # The core's connect deadline closes the upstream (which cancels the task);
        # the timer here is the connect's own bound should that never happen. A task
        # of the loop's own coroutine with a done callback, not a coroutine of ours
        # under asyncio.timeout: that wrapping was ~5 % of a message's user time.
        now = self.loop.time()
        server = self.pool.pick(now, up.client.tried)
        if server is None:  # every server down, or tried: the core says 421 at once
            self.loop.call_soon(up.connect_failed)
            return
        up.target = server.address
        session = up.client.session
        limit = session.policy.timeouts.connect if session is not None else 30.0
        task = self.loop.create_task(self.loop.create_connection(lambda: up, *server.address))
        up.connecting = task
        self._connects.add(task)
        bound = self.loop.call_later(limit + 1.0, self._connect_timed_out, task, up)
        task.add_done_callback(functools.partial(self._connect_done, up, bound))

    def _connect_timed_out(self, task: asyncio.Task[Any], up: UpstreamConnection) -> None:
        if not task.done():
            self._connect_failed(up, "timed out")
            task.cancel()
            up.connect_failed()

    def _connect_done(
        self, up: UpstreamConnection, bound: asyncio.TimerHandle, task: asyncio.Task[Any]
    ) -> None:
        bound.cancel()
        self._connects.discard(task)
        if task.cancelled():
            return  # the session gave the connection up, or the bound above fired
        exc = task.exception()
        if exc is None:
            return  # connected: the UpstreamConnection has been told
        if isinstance(exc, OSError):
            self._connect_failed(up, str(exc) or type(exc).__name__)
        else:
            log.error("upstream connect task failed", exc_info=exc)
            self.metrics.upstream_error("connect")
        up.connect_failed()

    def _connect_failed(self, up: UpstreamConnection, why: str) -> None:
        target = show(up.target) if up.target is not None else "?"
        log.warning("upstream %s unreachable: %s", target, why)
        self.metrics.upstream_error("connect")

    def reopen_logs(self, signal_name: str = "SIGUSR1") -> None:
        """Re-open the protocol log by its path (SIGHUP, SIGUSR1): after a rotation
        that renamed the file, new lines go to a new file. A failure keeps the old.
        Logs what was re-opened (the application log is stderr: nothing to do)."""
        reopened: list[str] = []
        if self.protocol_log is not None:
            try:
                path = self.protocol_log.reopen()
            except OSError as exc:
                log.error("protocol log not re-opened, still writing the old file: %s", exc)
                return
            if path is not None:
                reopened.append(path)
        lifecycle.reopened(reopened, signal_name)

    def hangup(self) -> None:
        """SIGHUP: re-open the protocol log, then reload the configuration."""
        self.reopen_logs("SIGHUP")
        self.reload()

    def policy_event(self, sid: str, peer: str, ev: PolicyEvent) -> None:
        self.stats.policy_events[ev.id] = self.stats.policy_events.get(ev.id, 0) + 1
        self.metrics.policy_event(ev.id)
        log.info("%s %s %s: %s", sid, peer, ev.id, ev.message)
        if self.protocol_log is not None:
            self.protocol_log.policy(sid, ev)

    # -- drain -------------------------------------------------------------------------
    async def drain(self) -> int:
        """Stop accepting, let transactions finish within the grace period (or until
        :meth:`cut_now`), then cut what is left. Returns how many sessions were cut."""
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        if self.checks is not None:
            self.checks.stop()
            self.checks = None
        for conn in list(self.sessions):
            conn.shutdown()
        waits = [self.loop.create_task(e.wait()) for e in (self._idle, self._cut)]
        await asyncio.wait(
            waits, timeout=self.config.drain_grace, return_when=asyncio.FIRST_COMPLETED
        )
        for w in waits:
            w.cancel()
        cut = list(self.sessions)
        for conn in cut:
            conn.cut()  # 421 4.3.2 for what is owed, both sides closed
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), CUT_FLUSH)
        for conn in list(self.sessions):
            conn.abort()
        for task in list(self._connects):
            task.cancel()
        if self._connects:
            await asyncio.wait(list(self._connects), timeout=1.0)
        if self._metrics_timer is not None:
            self._metrics_timer.cancel()
            self._metrics_timer = None
        self.metrics.flush()
        if self.protocol_log is not None:
            self.protocol_log.flush()
        return len(cut)

    def cut_now(self) -> None:
        """A second stop signal during the drain: stop waiting for transactions."""
        self._cut.set()

    async def serve_until_signalled(
        self,
        on_stop: Callable[[], None] | None = None,
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
        ready: Callable[[], None] | None = None,
    ) -> int:
        """Serve until one of ``signals``, then drain; ``on_stop`` runs once, first.
        The same signal again during the drain cuts it short, as does ``CUT_SIGNAL``
        at any time (the supervisor's second stop: a second SIGTERM could merge with
        the first while this process has not run yet). ``ready`` runs once
        the signals are handled: a stop, SIGHUP or SIGUSR1 sent as soon as the
        process says it serves is never lost. Returns how many sessions were cut
        (see :meth:`drain`)."""
        stop = asyncio.Event()

        def signalled() -> None:
            if stop.is_set():
                self.cut_now()
            stop.set()

        def cut_signalled() -> None:  # the supervisor's cut: a signal of its own
            self.cut_now()
            stop.set()

        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self.loop.add_signal_handler(sig, signalled)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self.loop.add_signal_handler(CUT_SIGNAL, cut_signalled)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self.loop.add_signal_handler(signal.SIGHUP, self.hangup)
            self.loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        if ready is not None:
            ready()
        await stop.wait()
        if on_stop is not None:
            on_stop()
        return await self.drain()

    @property
    def cut_reason(self) -> str:
        """Why :meth:`drain` cut the sessions it cut."""
        return lifecycle.SECOND_SIGNAL if self._cut.is_set() else lifecycle.GRACE_OVER
