"""Client access control: networks, per-IP session cap, per-IP connection rate.

Theory of operation: :class:`~smtpguard.config.access.AccessPolicy` is plain,
immutable data from the config file (it lives in ``config``, re-exported here);
:class:`AccessControl` checks the networks and, when the gateway has no shared
store, holds the counters itself (in memory, per process). It is asked once per
accepted connection, before the session starts. It never reads the clock: ``now`` is
an argument, so the rate limiter is tested with a fake clock.

With a shared store (``[state]``, the default for ``serve``), :class:`SharedLimits`
counts instead, exactly across all workers and instances that share it: the rate is
a token bucket per address in the store, and each session holds a *lease* on its
address (a member of a set with an expiry) that the process renews in one batch
every third of the lease time, so a process that dies frees its slots when they
expire. The store is asked only when ``max_sessions_per_ip`` or ``connection_rate``
is set; the decision comes back asynchronously and the session starts (or gets its
421) then. A store that fails lets the connection in (fail open), with a
``SG-STATE-FAIL-OPEN`` event.

Network matching is the policy's (most specific network wins). The rate limit is a
token bucket per address: a burst of ``connection_rate`` connections, refilled at
``connection_rate`` per ``rate_period`` seconds. Refused connections get one reply
and are closed by the caller; they never reach the inspector or the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from smtpguard.config.access import (
    DENIED,
    RATE_LIMITED,
    SESSION_CAP,
    AccessPolicy,
    Address,
    Network,
)
from smtpguard.core.actions import PolicyEvent
from smtpguard.core.grammar import make_reply
from smtpguard.state import FAIL_OPEN, Guarded, Lease, StoreError
from smtpguard.state.tasks import TaskSet

__all__ = [
    "DENIED",
    "RATE_LIMITED",
    "SESSION_CAP",
    "AccessControl",
    "AccessPolicy",
    "Address",
    "Network",
    "Refusal",
    "SharedLimits",
    "address_key",
    "parse_ip",
    "peer_ip",
]


class Waiting(Protocol):
    """What :class:`SharedLimits` uses of a connection waiting for the store's answer."""

    sid: str
    peer: str

    @property
    def transport(self) -> asyncio.Transport | None: ...
    def admitted(self) -> None: ...


C = TypeVar("C", bound=Waiting, contravariant=True)
W = TypeVar("W", bound=Waiting)


class Gate(Protocol[C]):
    """What :class:`SharedLimits` uses of the gateway (:class:`~smtpguard.gateway.server.
    Gateway`): typed here, not imported, so that access does not import the server."""

    def policy_event(self, sid: str, peer: str, ev: PolicyEvent) -> None: ...
    def refuse(self, conn: C, refusal: Refusal) -> None: ...
    def register(self, conn: C) -> None: ...


# Buckets are pruned (full ones dropped) whenever the table doubles past this size,
# so memory follows the number of recently active clients, not of all clients ever.
PRUNE_FLOOR = 4096


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is refused: event ID, log message, reply bytes, metric reason."""

    event_id: str
    message: str
    reply: bytes
    action: str
    reason: str


@dataclass
class AccessControl:
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    sessions: dict[str, int] = field(default_factory=dict)  # live sessions per address
    # address -> (tokens left, time of last update)
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _prune_at: int = PRUNE_FLOOR
    counting: bool = True  # False: a SharedLimits counts sessions and rates instead

    def admit(self, peer_ip: str, now: float) -> Refusal | None:
        """Decide for a new connection from ``peer_ip``. When admitted, the session is
        counted until :meth:`release`."""
        p = self.policy
        counting = self.counting and (p.connection_rate > 0 or p.max_sessions_per_ip > 0)
        if not (p.allow or p.deny or counting):
            return None  # no rule needs the address: skip parsing it on every accept
        ip = parse_ip(peer_ip)
        key = str(ip) if ip is not None else peer_ip
        if not p.permits(ip):
            return Refusal(
                DENIED,
                f"client {key} refused: network not allowed",
                make_reply(554, f"5.7.1 Access denied: {key} may not connect here").raw,
                "reject",
                "access-denied",
            )
        if not counting:
            return None
        if p.connection_rate > 0 and not self._take_token(key, now):
            return rate_refusal(key, p)
        live = self.sessions.get(key, 0)
        if p.max_sessions_per_ip > 0 and live >= p.max_sessions_per_ip:
            return cap_refusal(key, live)
        self.sessions[key] = live + 1
        return None

    def release(self, peer_ip: str) -> None:
        if not self.sessions:  # nothing is being counted
            return
        ip = parse_ip(peer_ip)
        key = str(ip) if ip is not None else peer_ip
        live = self.sessions.get(key, 0) - 1
        if live > 0:
            self.sessions[key] = live
        else:
            self.sessions.pop(key, None)

    def _take_token(self, key: str, now: float) -> bool:
        p = self.policy
        capacity = float(p.connection_rate)
        refill = capacity / p.rate_period
        tokens, last = self.buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + max(0.0, now - last) * refill)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > self._prune_at:
            self._prune(now)
        return ok

    def _prune(self, now: float) -> None:
        p = self.policy
        capacity = float(p.connection_rate)
        refill = capacity / p.rate_period if p.rate_period > 0 else capacity
        self.buckets = {
            k: (t, last)
            for k, (t, last) in self.buckets.items()
            if t + (now - last) * refill < capacity
        }
        self._prune_at = max(PRUNE_FLOOR, 2 * len(self.buckets))


def rate_refusal(key: str, p: AccessPolicy) -> Refusal:
    return Refusal(
        RATE_LIMITED,
        f"client {key} refused: over {p.connection_rate} connections per {p.rate_period:g}s",
        make_reply(421, f"4.7.0 Too many connections from {key}, try again later").raw,
        "drop-connection",
        "rate-limit",
    )


def cap_refusal(key: str, live: int) -> Refusal:
    return Refusal(
        SESSION_CAP,
        f"client {key} refused: already {live} sessions open",
        make_reply(421, f"4.7.0 Too many sessions from {key}, try again later").raw,
        "drop-connection",
        "session-cap",
    )


def address_key(peer_ip: str) -> str:
    """The address a limit counts: IPv4-mapped IPv6 folded, brackets and zone dropped."""
    ip = parse_ip(peer_ip)
    return str(ip) if ip is not None else peer_ip


class SharedLimits:
    """``max_sessions_per_ip`` and ``connection_rate`` in the shared store, for every
    worker and instance that uses it (see the module docstring)."""

    def __init__(self, store: Guarded, access: AccessControl, lease: float = 30.0) -> None:
        self.store = store
        self.access = access
        access.counting = False
        self.lease = lease
        # Unique per process across a fleet and across restarts (a pid is reused).
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leases: dict[str, Lease] = {}  # session id -> its lease
        self._pending: dict[str, Lease] = {}  # session id -> lease being asked for
        self._tasks = TaskSet("shared limits")
        self._renewal: asyncio.TimerHandle | None = None

    @property
    def needed(self) -> bool:
        p = self.access.policy
        return p.max_sessions_per_ip > 0 or p.connection_rate > 0

    async def decide(self, lease: Lease, sid: str) -> Refusal | None:
        """The store's decision for a new session (``lease``: its address and holder,
        in ``_pending``); the lease is kept when admitted. Raises StoreError (the
        caller fails open)."""
        p = self.access.policy
        key = lease[0]
        try:
            verdict = await self.store.admit(
                *lease, p.max_sessions_per_ip, self.lease, p.connection_rate, p.rate_period
            )
        finally:
            gone = self._pending.pop(sid, None) is None  # released while asking
        if gone:  # released while asking; again, should the store have run them reordered
            if verdict == "ok" and p.max_sessions_per_ip > 0:
                self._tasks.spawn(self._release([lease]))
            return None
        if verdict == "rate":
            return rate_refusal(key, p)
        if verdict == "cap":
            return cap_refusal(key, p.max_sessions_per_ip)
        if p.max_sessions_per_ip > 0:
            self.leases[sid] = lease
            self._arm_renewal()
        return None

    def admit(self, gw: Gate[W], conn: W) -> None:
        """Decide in the background; the session starts (``gw.register`` then
        ``conn.admitted``) or is refused once the store has answered. The lease is
        known at once, so a release that comes first follows the request for it."""
        lease = (address_key(peer_ip(conn.peer)), f"{self.instance}:{conn.sid}")
        self._pending[conn.sid] = lease
        self._tasks.spawn(self._admit(gw, conn, lease))

    async def _admit(self, gw: Gate[W], conn: W, lease: Lease) -> None:
        refusal = None
        try:
            refusal = await self.decide(lease, conn.sid)
        except StoreError as exc:
            gw.policy_event(
                conn.sid, conn.peer, PolicyEvent(FAIL_OPEN, f"limits not checked: {exc}", "log")
            )
        t = conn.transport
        if t is None or t.is_closing():  # the client left while the store answered
            self.release(conn.sid)
            return
        if refusal is not None:
            gw.refuse(conn, refusal)  # the one refusal block: counted, logged, told
            return
        gw.register(conn)
        conn.admitted()

    def release(self, sid: str) -> None:
        """The session ended (or its client left before the store answered: its
        lease is given back right behind the request for it, so a connection that is
        gone never holds a slot that a newer one is refused for)."""
        lease = self.leases.pop(sid, None) or self._pending.pop(sid, None)
        if lease is not None:
            self._tasks.spawn(self._release([lease]))

    async def _release(self, leases: list[Lease]) -> None:
        with contextlib.suppress(StoreError):  # the guard logged it; the lease expires
            await self.store.lease_release(leases)

    def _arm_renewal(self) -> None:
        if self._renewal is None:
            loop = asyncio.get_running_loop()
            self._renewal = loop.call_later(self.lease / 3, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        if self.leases:
            self._tasks.spawn(self._renew_all(list(self.leases.values())))
            self._arm_renewal()

    async def _renew_all(self, leases: list[Lease]) -> None:
        with contextlib.suppress(StoreError):  # logged by the guard; tried again next time
            await self.store.lease_renew(leases, self.lease)

    async def close(self) -> None:
        """At shutdown: give back every lease still held, then close the store."""
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        await self._tasks.wait(self.store.retry + 1.0)
        leases, self.leases = list(self.leases.values()), {}
        if leases:
            await self._release(leases)
        await self.store.close()


def parse_ip(text: str) -> Address | None:
    """The address in ``text`` (IPv4-mapped IPv6 folded to IPv4), or None."""
    try:
        ip = ipaddress.ip_address(text.strip("[]").partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def peer_ip(peer: str) -> str:
    """The address part of a connection's ``"ip:port"`` peer string."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isascii() and port.isdigit() else peer
