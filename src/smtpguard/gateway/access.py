"""Client access control: networks, per-IP session cap, per-IP connection rate.

Theory of operation: :class:`AccessPolicy` is plain, immutable data from the config
file; :class:`AccessControl` holds the live counters (in memory, per process) and is
asked once per accepted connection, before the session starts. It never reads the
clock: ``now`` is an argument, so the rate limiter is tested with a fake clock.

Network matching is most-specific-wins: the longest ``allow`` or ``deny`` prefix that
contains the address decides (a tie goes to ``deny``). An address that matches
neither list is allowed when ``allow`` is empty, else refused. The rate limit is a
token bucket per address: a burst of ``connection_rate`` connections, refilled at
``connection_rate`` per ``rate_period`` seconds. Refused connections get one reply
and are closed by the caller; they never reach the inspector or the upstream.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from smtpguard.core.grammar import make_reply

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Event IDs (documented in docs/events.md).
DENIED = "SG-ACCESS-DENIED"
SESSION_CAP = "SG-ACCESS-SESSION-CAP"
RATE_LIMITED = "SG-ACCESS-RATE-LIMIT"

# Buckets are pruned (full ones dropped) whenever the table doubles past this size,
# so memory follows the number of recently active clients, not of all clients ever.
PRUNE_FLOOR = 4096


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    max_sessions_per_ip: int = 0  # 0: no per-address cap
    connection_rate: int = 0  # connections per address per rate_period; 0: off
    rate_period: float = 60.0
    normalize_networks: tuple[Network, ...] = ()  # smuggling = normalize for these
    proxy_from: tuple[Network, ...] = ()  # load balancers that send a PROXY header

    def expects_proxy(self, ip: Address | None) -> bool:
        return ip is not None and _longest(self.proxy_from, ip) >= 0

    def permits(self, ip: Address | None) -> bool:
        if ip is None:  # not an IP peer (e.g. a Unix socket): local, trusted
            return True
        allow = _longest(self.allow, ip)
        deny = _longest(self.deny, ip)
        if deny >= 0 and deny >= allow:
            return False
        return allow >= 0 or not self.allow

    def normalizes(self, ip: Address | None) -> bool:
        return ip is not None and _longest(self.normalize_networks, ip) >= 0


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

    def admit(self, peer_ip: str, now: float) -> Refusal | None:
        """Decide for a new connection from ``peer_ip``. When admitted, the session is
        counted until :meth:`release`."""
        p = self.policy
        if not (p.allow or p.deny or p.connection_rate > 0 or p.max_sessions_per_ip > 0):
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
        if p.connection_rate > 0 and not self._take_token(key, now):
            return Refusal(
                RATE_LIMITED,
                f"client {key} refused: over {p.connection_rate} connections "
                f"per {p.rate_period:g}s",
                make_reply(421, f"4.7.0 Too many connections from {key}, try again later").raw,
                "drop-connection",
                "rate-limit",
            )
        live = self.sessions.get(key, 0)
        if p.max_sessions_per_ip > 0 and live >= p.max_sessions_per_ip:
            return Refusal(
                SESSION_CAP,
                f"client {key} refused: already {live} sessions open",
                make_reply(421, f"4.7.0 Too many sessions from {key}, try again later").raw,
                "drop-connection",
                "session-cap",
            )
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
    return host if sep and port.isdigit() else peer


def _longest(networks: tuple[Network, ...], ip: Address) -> int:
    """Prefix length of the most specific network containing ``ip``; -1 if none."""
    best = -1
    for net in networks:
        if net.version == ip.version and ip in net and net.prefixlen > best:
            best = net.prefixlen
    return best
