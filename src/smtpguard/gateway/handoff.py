"""A client connection's side of its gateway: what it uses of the gateway, and the
core's actions it hands on to it.

Theory of operation. The connection (:class:`~smtpguard.gateway.connection.
ClientConnection`) carries out the core's actions in order. Those that act on its
own transports (writes, the timer, opening and closing the upstream, TLS, closing the
client) are its methods; those that only hand something on to the gateway are here:
a policy event to log and count, how an upstream server turned out (the gateway
keeps the servers' health; the connection keeps the servers its round tried), and
the shared store's lookups and records (``[dedupe]``, shared rate limits, the
greeting wait's passes). A store answers later, through the connection's
``dedupe_answer``, ``rate_answer`` or ``pass_answer``, which pass the core's one door.

The gateway (:class:`GatewayView`) and the connection (:class:`Conn`) are typed here
as Protocols, not imported: this module is compiled with the connection's (setup.py),
and its analysis must not reach the server's configuration code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar

from smtpguard.core.actions import (
    PassLookup,
    PassRecord,
    PolicyEvent,
    RateCheck,
    ServerOutcome,
)
from smtpguard.core.dedupe import DedupeLookup, DedupeRecord
from smtpguard.core.policy import Policy
from smtpguard.gateway.access import AccessControl
from smtpguard.gateway.metrics import Metrics
from smtpguard.gateway.tls import TlsContexts
from smtpguard.gateway.upstreamconn import UpstreamConnection
from smtpguard.logs import ProtocolLog
from smtpguard.proxyproto import ProxyVersion
from smtpguard.state.dedupe import Dedupe
from smtpguard.state.passes import Passes
from smtpguard.state.ratelimit import RateLimits

__all__ = ["HANDOFFS", "Conn", "GatewayView"]

C = TypeVar("C", contravariant=True)


class GatewayView(Protocol[C]):
    """What a connection of type ``C`` uses of its gateway
    (:class:`smtpguard.gateway.server.Gateway`)."""

    loop: asyncio.AbstractEventLoop
    policy: Policy
    access: AccessControl
    dedupe: Dedupe | None
    rates: RateLimits | None
    passes: Passes | None
    metrics: Metrics
    protocol_log: ProtocolLog | None
    tls: TlsContexts | None
    upstream_proxy: ProxyVersion

    def next_session_id(self) -> str: ...
    def policy_for(self, peer_ip: str) -> Policy: ...
    def admit(self, conn: C) -> bool | None: ...
    def release(self, conn: C) -> None: ...
    def open_upstream(self, up: UpstreamConnection) -> None: ...
    def upstream_outcome(
        self, address: tuple[str, int], ok: bool, why: str, latency: float | None, session: bool
    ) -> None: ...
    def policy_event(self, sid: str, peer: str, ev: PolicyEvent) -> None: ...


class Conn(Protocol):
    """What handing an action on uses of the client connection."""

    sid: str
    peer: str
    addr: tuple[str, int] | None  # the client (from PROXY if trusted)
    # The servers this round tried and that failed before their greeting; the server
    # of the current upstream connection, and when it was picked (perf_counter).
    tried: list[tuple[str, int]]
    target: tuple[str, int] | None
    target_at: float

    @property
    def gw(self) -> GatewayView[Any]: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    def dedupe_answer(self, queue_id: str | None) -> None: ...
    def rate_answer(self, allowed: bool | None) -> None: ...
    def pass_answer(self, passed: bool) -> None: ...


def policy_event(conn: Conn, a: PolicyEvent) -> None:
    conn.gw.policy_event(conn.sid, conn.peer, a)


def server_outcome(conn: Conn, a: ServerOutcome) -> None:
    target = conn.target
    if target is None:  # no server was left to try: nothing to record
        return
    if a.ok:
        conn.tried.clear()
        took = time.perf_counter() - conn.target_at
        conn.gw.upstream_outcome(target, True, "", took, True)
    else:
        conn.tried.append(target)
        conn.gw.upstream_outcome(target, False, a.why, None, True)


def dedupe_lookup(conn: Conn, a: DedupeLookup) -> None:
    dedupe = conn.gw.dedupe
    if dedupe is not None:
        dedupe.lookup(conn.gw, conn, a.key)  # answers with dedupe_answer
    else:  # no store (dedupe turned on by a reload): relayed as usual
        conn.loop.call_soon(conn.dedupe_answer, None)


def dedupe_record(conn: Conn, a: DedupeRecord) -> None:
    dedupe = conn.gw.dedupe
    if dedupe is not None:
        dedupe.record(conn.gw, conn, a.key, a.queue_id)


def rate_check(conn: Conn, a: RateCheck) -> None:
    rates = conn.gw.rates
    if rates is not None:
        rates.check(conn.gw, conn, a)  # answers with rate_answer
    else:  # no store (cannot happen: set_policy): allowed, as when it fails
        conn.loop.call_soon(conn.rate_answer, None)


def pass_lookup(conn: Conn, a: PassLookup) -> None:
    passes = conn.gw.passes
    if passes is not None and conn.addr is not None:
        passes.lookup(conn.gw, conn, conn.addr[0])  # answers with pass_answer
    # else (no store, or no address): no answer; the wait runs its course


def pass_record(conn: Conn, a: PassRecord) -> None:
    passes = conn.gw.passes
    if passes is not None and conn.addr is not None:
        passes.record(conn.gw, conn, conn.addr[0], a.ttl)


# The action types handed on, each with what carries it out.
HANDOFFS: Final[dict[type, Callable[[Any, Any], None]]] = {
    PolicyEvent: policy_event,
    ServerOutcome: server_outcome,
    DedupeLookup: dedupe_lookup,
    DedupeRecord: dedupe_record,
    RateCheck: rate_check,
    PassLookup: pass_lookup,
    PassRecord: pass_record,
}
