"""The shared-state interface: what limits and duplicate suppression need of a store.

Theory of operation: a store holds four kinds of record, each with an expiry, and
every operation on one record is atomic across all processes that share the store
(the workers of a host with the embedded default, every instance of a fleet with
Redis/Valkey):

- **leases**: a set per key of holders, each with its own expiry. ``lease_acquire``
  adds a holder only while the set has fewer than ``cap`` live members; a session
  holds one lease on its client address and renews it in batches while it lives, so
  a process that dies without a clean close frees its slots when they expire;
- **token buckets**: ``take_token`` is one connection-rate decision (a burst of
  ``capacity``, refilled at ``capacity`` per ``period`` seconds);
- **values**: ``set_if_absent`` (compare-and-set on "no value") and ``get``, for the
  duplicate-suppression keys;
- **window counters**: ``count_event`` counts one event in a fixed window that
  starts with the first event and expires ``period`` seconds later, for the
  ``rate-limit`` action of the checks.

Every method is a coroutine; none blocks the event loop. Failures (unreachable,
timeout, a broken file) raise :class:`StoreError` with a one-line reason; callers
fail open (see ``smtpguard.state.guard``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

Lease = tuple[str, str]  # (key, holder)


class StoreError(Exception):
    """The store could not do what was asked; ``str()`` is one line."""


class Store(ABC):
    """A shared state store. ``name`` says which, for logs: "local" or the redis URL
    without credentials."""

    name: str = "store"

    @abstractmethod
    async def lease_acquire(self, key: str, holder: str, cap: int, ttl: float) -> bool:
        """Add ``holder`` to ``key``'s set for ``ttl`` seconds if fewer than ``cap``
        live holders are there; True if added (or already held)."""

    @abstractmethod
    async def lease_renew(self, leases: Sequence[Lease], ttl: float) -> None:
        """Push the expiry of existing ``leases`` to ``ttl`` seconds from now."""

    @abstractmethod
    async def lease_release(self, leases: Sequence[Lease]) -> None:
        """Remove ``leases`` (missing ones are ignored)."""

    @abstractmethod
    async def lease_count(self, key: str) -> int:
        """Live holders of ``key`` (for tests and diagnostics)."""

    @abstractmethod
    async def take_token(self, key: str, capacity: int, period: float) -> bool:
        """Take one token from ``key``'s bucket; False if it is empty."""

    async def admit(
        self, key: str, holder: str, cap: int, ttl: float, rate: int, period: float
    ) -> str:
        """A new session's whole decision in one step: a token from ``key``'s bucket
        (when ``rate``), then a lease (when ``cap``). Returns "ok", "rate" or "cap".
        Backends do it in one transaction / one round trip."""
        if rate > 0 and not await self.take_token(key, rate, period):
            return "rate"
        if cap > 0 and not await self.lease_acquire(key, holder, cap, ttl):
            return "cap"
        return "ok"

    @abstractmethod
    async def count_event(self, key: str, period: float) -> int:
        """Count one event under ``key``: the events in its window, this one included.
        A window starts with the first event after the last one expired and lasts
        ``period`` seconds."""

    @abstractmethod
    async def set_if_absent(self, key: str, value: str, ttl: float) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds unless a live value is
        there; True if stored."""

    @abstractmethod
    async def get(self, key: str) -> str | None:
        """The live value of ``key``, or None."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads; the store is not used afterwards."""
