"""Failing open: a store that is down costs a session at most one timeout, and is
logged once per outage, not once per session.

:class:`Guarded` wraps a :class:`~smtpguard.state.base.Store`. After a failure it
bounds every operation by ``timeout`` seconds; after a failure it
answers every operation with :class:`StoreError` at once for ``retry`` seconds (no
session waits on a store known to be down), then lets one operation through to see
whether the store is back. The first failure logs ``SG-STATE-UNAVAILABLE`` (warning)
and the first success after it ``SG-STATE-RECOVERED``; each failed or skipped
operation is reported to ``on_failure`` (the gateway counts it as a policy event, so
it has a metric). Callers fail open: a limit admits, duplicate suppression is
skipped, and a message is relayed as if there were no store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from smtpguard.state.base import Lease, Store, StoreError

if TYPE_CHECKING:
    from smtpguard.core.actions import PolicyEvent

T = TypeVar("T")

log = logging.getLogger("smtpguard.state")

UNAVAILABLE = "SG-STATE-UNAVAILABLE"
RECOVERED = "SG-STATE-RECOVERED"
FAIL_OPEN = "SG-STATE-FAIL-OPEN"


class PolicyEvents(Protocol):
    """Where a store user reports that it failed open (the gateway logs and counts it)."""

    def policy_event(self, sid: str, peer: str, ev: PolicyEvent) -> None: ...


class Guarded(Store):
    def __init__(
        self,
        store: Store,
        retry: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 0.5,
    ) -> None:
        self.store = store
        self.name = store.name
        self.retry = retry
        self.timeout = timeout
        self._clock = clock
        self._down_until: float | None = None  # None: healthy
        self.failures = 0  # operations failed or skipped, in this process

    @property
    def healthy(self) -> bool:
        return self._down_until is None

    async def _guard(self, what: Callable[[], Awaitable[T]]) -> T:
        down = self._down_until
        if down is not None and self._clock() < down:
            self.failures += 1
            raise StoreError(f"{self.name}: unavailable (next try in {down - self._clock():.1f}s)")
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    result = await what()
            except TimeoutError:
                raise StoreError(f"{self.name}: no answer within {self.timeout:g}s") from None
        except StoreError as exc:
            self.failures += 1
            if self._down_until is None:
                log.warning("%s shared state store unavailable, failing open: %s", UNAVAILABLE, exc)
            self._down_until = self._clock() + self.retry
            raise
        if self._down_until is not None:
            self._down_until = None
            log.warning("%s shared state store %s answers again", RECOVERED, self.name)
        return result

    async def lease_acquire(self, key: str, holder: str, cap: int, ttl: float) -> bool:
        return await self._guard(lambda: self.store.lease_acquire(key, holder, cap, ttl))

    async def admit(
        self, key: str, holder: str, cap: int, ttl: float, rate: int, period: float
    ) -> str:
        return await self._guard(lambda: self.store.admit(key, holder, cap, ttl, rate, period))

    async def lease_renew(self, leases: Sequence[Lease], ttl: float) -> None:
        await self._guard(lambda: self.store.lease_renew(leases, ttl))

    async def lease_release(self, leases: Sequence[Lease]) -> None:
        await self._guard(lambda: self.store.lease_release(leases))

    async def lease_count(self, key: str) -> int:
        return await self._guard(lambda: self.store.lease_count(key))

    async def take_token(self, key: str, capacity: int, period: float) -> bool:
        return await self._guard(lambda: self.store.take_token(key, capacity, period))

    async def count_event(self, key: str, period: float) -> int:
        return await self._guard(lambda: self.store.count_event(key, period))

    async def set_if_absent(self, key: str, value: str, ttl: float) -> bool:
        return await self._guard(lambda: self.store.set_if_absent(key, value, ttl))

    async def get(self, key: str) -> str | None:
        return await self._guard(lambda: self.store.get(key))

    async def ping(self) -> None:
        await self._guard(self.store.ping)

    async def close(self) -> None:
        await self.store.close()
