"""The fleet store: Redis or Valkey, through the official ``redis`` client's asyncio
API (hiredis parses replies when it is installed: ``pip install 'smtpguard[hiredis]'``).

``[state] url`` takes ``redis://[[USER]:PASSWORD@]HOST:PORT/DB``, ``rediss://`` (TLS)
and ``unix:///path/to/redis.sock?db=N``, as redis-py reads them.

Every read-modify-write is one Lua script, so it is atomic on the server whatever
the number of instances, and every script takes the time from the server itself
(``TIME``): the instances of a fleet need not agree on their clocks. Leases are a
sorted set per client address (member: holder, score: expiry in ms); buckets a hash;
duplicate keys plain strings with ``PX``; rate-limit windows counters (``INCR``, the
TTL set by the first event). Every key has a TTL, so nothing outlives
its use even if no instance ever cleans up. Keys start with ``prefix`` (default
``smtpguard:``) so one database can serve other programs too. Redis Cluster is not
supported (a renewal batch spans keys of several slots).

Each operation has a timeout; a connection that broke is re-opened by the client's
pool on the next operation. Errors become :class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from smtpguard.state.base import Lease, Store, StoreError

T = TypeVar("T")

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

_ACQUIRE = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  return 1
end
return 0
"""
)

# KEYS: lease set, bucket; ARGV: holder, cap, ttl ms, rate, period ms.
_ADMIT = (
    _NOW_MS
    + """
local rate = tonumber(ARGV[4])
if rate > 0 then
  local period = tonumber(ARGV[5])
  local b = redis.call('HMGET', KEYS[2], 'tokens', 'at')
  local tokens = rate
  if b[1] then
    tokens = math.min(rate, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate / period)
  end
  local ok = tokens >= 1
  if ok then tokens = tokens - 1 end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'at', now)
  redis.call('PEXPIRE', KEYS[2], math.ceil(period))
  if not ok then return 'rate' end
end
local cap = tonumber(ARGV[2])
if cap > 0 then
  local ttl = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= cap then
    return 'cap'
  end
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return 'ok'
"""
)

_RENEW = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + ttl, ARGV[i + 1]) == 1 then
    if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  end
end
return 0
"""
)

_COUNT = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"

_TOKEN = (
    _NOW_MS
    + """
local cap = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = cap
if b[1] then
  tokens = math.min(cap, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * cap / period)
end
local ok = 0
if tokens >= 1 then tokens = tokens - 1 ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(period))
return ok
"""
)


_COUNT_EVENT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class RedisStore(Store):
    def __init__(self, url: str, timeout: float = 0.5, prefix: str = "smtpguard:") -> None:
        self.name = redacted(url)
        self.timeout = timeout
        self.prefix = prefix
        try:
            self._r: Any = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # One attempt per operation: the caller fails open at once rather
                # than holding a session through retries; the pool reconnects on
                # the next operation.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=30,
                client_name="smtpguard",
            )
        except (ValueError, RedisError) as exc:
            raise StoreError(f"[state] url {self.name}: {exc}") from None
        self._acquire = self._r.register_script(_ACQUIRE)
        self._admit = self._r.register_script(_ADMIT)
        self._renew = self._r.register_script(_RENEW)
        self._count = self._r.register_script(_COUNT)
        self._token = self._r.register_script(_TOKEN)
        self._count_event = self._r.register_script(_COUNT_EVENT)

    async def _do(self, what: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await what
        except TimeoutError:
            raise StoreError(f"{self.name}: no answer within {self.timeout:g}s") from None
        except (RedisError, OSError) as exc:
            raise StoreError(f"{self.name}: {exc or type(exc).__name__}") from None

    def _k(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    async def lease_acquire(self, key: str, holder: str, cap: int, ttl: float) -> bool:
        got = await self._do(
            self._acquire(keys=[self._k("lease", key)], args=[holder, cap, _ms(ttl)])
        )
        return bool(got)

    async def admit(
        self, key: str, holder: str, cap: int, ttl: float, rate: int, period: float
    ) -> str:
        keys = [self._k("lease", key), self._k("rate", key)]
        got = await self._do(
            self._admit(keys=keys, args=[holder, cap, _ms(ttl), rate, _ms(period)])
        )
        return got.decode() if isinstance(got, bytes) else str(got)

    async def lease_renew(self, leases: Sequence[Lease], ttl: float) -> None:
        if leases:
            keys = [self._k("lease", k) for k, _ in leases]
            await self._do(self._renew(keys=keys, args=[_ms(ttl), *(h for _, h in leases)]))

    async def lease_release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        pipe = self._r.pipeline(transaction=False)
        for key, holder in leases:
            pipe.zrem(self._k("lease", key), holder)
        await self._do(pipe.execute())

    async def lease_count(self, key: str) -> int:
        return int(await self._do(self._count(keys=[self._k("lease", key)])))

    async def take_token(self, key: str, capacity: int, period: float) -> bool:
        ok = await self._do(self._token(keys=[self._k("rate", key)], args=[capacity, _ms(period)]))
        return bool(ok)

    async def count_event(self, key: str, period: float) -> int:
        keys = [self._k("count", key)]
        return int(await self._do(self._count_event(keys=keys, args=[_ms(period)])))

    async def set_if_absent(self, key: str, value: str, ttl: float) -> bool:
        done = await self._do(self._r.set(self._k("kv", key), value, nx=True, px=_ms(ttl)))
        return bool(done)

    async def get(self, key: str) -> str | None:
        value = await self._do(self._r.get(self._k("kv", key)))
        if value is None:
            return None
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    async def ping(self) -> None:
        await self._do(self._r.ping())

    async def close(self) -> None:
        close = getattr(self._r, "aclose", None) or self._r.close  # redis < 5.0.1: close
        with contextlib.suppress(RedisError, OSError):
            await close()
