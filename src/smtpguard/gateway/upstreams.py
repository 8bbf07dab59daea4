"""Several upstream servers: which one a session's next connection goes to, and
each one's health.

Theory of operation. :class:`UpstreamPool` holds one :class:`Server` per address of
``[gateway] upstream``, in the configured order. It does no I/O and reads no clock:
the gateway asks it for a server (:meth:`UpstreamPool.pick`, with the time and the
servers this session already tried), and reports how each connection turned out
(:meth:`~UpstreamPool.succeeded` when the server greeted with 220,
:meth:`~UpstreamPool.failed` when it did not: the core decides which, and says so
with :class:`~smtpguard.core.actions.ServerOutcome`). Each report returns the
:class:`Change` of state it caused, if any, for the gateway to log.

* **Policy.** ``failover``: the first server in order that may be used;
  ``round-robin``: the next one after the last pick that may be used, so sessions
  spread evenly over the healthy servers.
* **Passive health.** ``fail_limit`` consecutive failures mark a server down; a
  success resets the count. Without active checks, a down server may be picked
  again once ``backoff`` seconds have passed, after every server that is up: one
  session then tries it, and its outcome decides (a success brings it back up).
* **Active health.** With ``upstream_check_interval`` set (``checked``), the gateway
  connects to each server in turn, reads the greeting and says QUIT
  (gateway/healthcheck.py); the outcome is reported the same way. A down server
  then comes back only through a check that sees it greet, never by making a
  client's session wait on it, and a dead one is found without a client waiting.
* **Nothing usable.** When every server is down (and, without checks, in its
  back-off) or the session has tried every one, :meth:`~UpstreamPool.pick` returns
  None: the session gets ``421 4.4.1`` at once, with no connection attempted.
* **Reload.** :meth:`~UpstreamPool.replace` installs a new list: a server kept
  keeps its health and counters; sessions in flight keep their connections.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from smtpguard.core.policy import Balance

Address = tuple[str, int]

# Log-only event IDs (docs/events.md): a server marked down, a server back up.
UPSTREAM_DOWN = "SG-UPSTREAM-DOWN"
UPSTREAM_UP = "SG-UPSTREAM-UP"


class Health(enum.Enum):
    UP = "up"
    DOWN = "down"


def show(address: Address) -> str:
    """``HOST:PORT`` (brackets around an IPv6 host), as logs and metrics name it."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server:
    """One upstream server's health and counters (``name``: as logs and metrics
    show it, made once)."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.name = show(address)
        self.health = Health.UP
        self.failures = 0  # consecutive
        self.down_until = 0.0  # end of the back-off while DOWN
        self.sessions = 0  # connections it greeted with 220
        self.failures_total = 0
        self.last_latency: float | None = None  # connect to 220 greeting, seconds
        self.last_error = ""


@dataclass(frozen=True)
class Change:
    """A server changed state: the gateway logs it (SG-UPSTREAM-DOWN / -UP)."""

    server: Server
    health: Health
    why: str


class UpstreamPool:
    """The upstream servers, their health, and the choice of one per connection."""

    def __init__(
        self,
        addresses: Iterable[Address],
        balance: Balance = Balance.FAILOVER,
        fail_limit: int = 3,
        backoff: float = 30.0,
        checked: bool = False,
    ) -> None:
        self.balance = balance
        self.fail_limit = fail_limit
        self.backoff = backoff
        self.checked = checked  # active checks bring down servers back, not sessions
        self.servers: list[Server] = []
        self._next = 0  # round-robin: where the next pick starts looking
        self.replace(addresses)

    def replace(
        self,
        addresses: Iterable[Address],
        balance: Balance | None = None,
        fail_limit: int | None = None,
        backoff: float | None = None,
        checked: bool | None = None,
    ) -> None:
        """Use this list from now on (a reload); kept servers keep their state."""
        known = {s.address: s for s in self.servers}
        servers: list[Server] = []
        for address in addresses:
            if all(s.address != address for s in servers):
                servers.append(known.get(address) or Server(address))
        if not servers:
            raise ValueError("at least one upstream server")
        self.servers = servers
        self._next %= len(servers)
        if balance is not None:
            self.balance = balance
        if fail_limit is not None:
            self.fail_limit = fail_limit
        if backoff is not None:
            self.backoff = backoff
        if checked is not None:
            self.checked = checked

    def find(self, address: Address) -> Server | None:
        for server in self.servers:
            if server.address == address:
                return server
        return None

    # -- choosing -------------------------------------------------------------------
    def usable(self, server: Server, now: float) -> bool:
        """Up, or (without active checks) down with its back-off over: one session
        may try it again."""
        return server.health is Health.UP or (not self.checked and now >= server.down_until)

    def pick(self, now: float, tried: Collection[Address] = ()) -> Server | None:
        """The server for a session's next connection, None if none may be tried.
        Servers that are up come first; a down one whose back-off has passed only
        when no server that is up is left to try."""
        servers = self.servers
        count = len(servers)
        rr = self.balance is Balance.ROUND_ROBIN
        start = self._next if rr else 0
        chosen: Server | None = None
        at = 0
        retry: Server | None = None  # the first down one whose back-off has passed
        retry_at = 0
        for i in range(count):  # every session: a plain loop, nothing built
            at = (start + i) % count
            server = servers[at]
            if tried and server.address in tried:
                continue
            if server.health is Health.UP:
                chosen = server
                break
            if retry is None and self.usable(server, now):
                retry, retry_at = server, at
        if chosen is None:
            chosen, at = retry, retry_at
        if chosen is not None and rr:
            self._next = (at + 1) % count
        return chosen

    # -- outcomes ---------------------------------------------------------------------
    def succeeded(
        self, address: Address, now: float, latency: float | None, session: bool = True
    ) -> Change | None:
        """The server greeted with 220: a session's connection, or a check."""
        server = self.find(address)
        if server is None:  # removed by a reload meanwhile
            return None
        server.failures = 0
        if session:
            server.sessions += 1
        server.last_latency = latency
        if server.health is Health.UP:
            return None
        server.health = Health.UP
        server.down_until = 0.0
        return Change(server, Health.UP, "greeted with 220")

    def failed(self, address: Address, now: float, why: str) -> Change | None:
        """The server failed before its 220 greeting: refused, timed out, lost, 4xx."""
        server = self.find(address)
        if server is None:
            return None
        server.failures += 1
        server.failures_total += 1
        server.last_error = why
        if server.failures < self.fail_limit:
            return None
        was = server.health
        server.health = Health.DOWN
        server.down_until = now + self.backoff  # a failed retry starts a new back-off
        if was is Health.DOWN:
            return None
        return Change(server, Health.DOWN, f"{server.failures} failures in a row, last: {why}")
