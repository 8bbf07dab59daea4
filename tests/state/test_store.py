"""Both store backends against the same contract: SQLite (embedded) and a real
redis-server on loopback; atomicity across processes; failing open."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpguard.state import Guarded, StateSettings, StoreError, open_store, prepare
from smtpguard.state.base import Store
from smtpguard.state.redis_store import RedisStore, redacted
from smtpguard.state.sqlite_store import SqliteStore
from smtpguard.state.sqlite_store import prepare as prepare_sqlite
from tests.peers import free_port
from tests.redis_server import RedisServer


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    if request.param == "local":
        prepare_sqlite(str(tmp_path))
        return lambda: SqliteStore(str(tmp_path))
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"t{uuid.uuid4().hex[:8]}:"  # keys of one test never meet another's
    return lambda: RedisStore(server.url, 2.0, prefix)


async def _with(store: Store, fn: Callable[[Store], object]) -> object:
    try:
        return await fn(store)  # type: ignore[misc]
    finally:
        await store.close()


def test_leases_cap_release_and_reacquire(make_store: Callable[[], Store]) -> None:
    async def body(s: Store) -> None:
        assert await s.lease_acquire("192.0.2.1", "a", 2, 30)
        assert await s.lease_acquire("192.0.2.1", "b", 2, 30)
        assert not await s.lease_acquire("192.0.2.1", "c", 2, 30)
        assert await s.lease_acquire("192.0.2.1", "a", 2, 30)  # already held: renewed
        assert await s.lease_acquire("192.0.2.2", "c", 2, 30)  # another key
        assert await s.lease_count("192.0.2.1") == 2
        await s.lease_release([("192.0.2.1", "a"), ("192.0.2.1", "zz")])
        assert await s.lease_count("192.0.2.1") == 1
        assert await s.lease_acquire("192.0.2.1", "c", 2, 30)
        await s.lease_renew([("192.0.2.1", "b"), ("192.0.2.1", "c")], 30)
        assert await s.lease_count("192.0.2.1") == 2

    run(_with(make_store(), body))


def test_leases_expire_unless_renewed(make_store: Callable[[], Store]) -> None:
    async def body(s: Store) -> None:
        assert await s.lease_acquire("k", "dead", 1, 0.3)
        assert await s.lease_acquire("k2", "alive", 1, 0.3)
        assert not await s.lease_acquire("k", "new", 1, 0.3)
        deadline = time.monotonic() + 10
        while await s.lease_count("k") and time.monotonic() < deadline:
            await s.lease_renew([("k2", "alive")], 5)
            await asyncio.sleep(0.05)
        assert await s.lease_count("k") == 0  # a holder that stopped renewing is gone
        assert await s.lease_count("k2") == 1  # the renewed one is not
        assert await s.lease_acquire("k", "new", 1, 30)

    run(_with(make_store(), body))


def test_token_bucket_burst(make_store: Callable[[], Store]) -> None:
    async def body(s: Store) -> None:
        got = [await s.take_token("192.0.2.9", 3, 3600) for _ in range(5)]
        assert got == [True, True, True, False, False]
        assert await s.take_token("192.0.2.10", 3, 3600)  # per key

    run(_with(make_store(), body))


def test_values_compare_and_set_and_expiry(make_store: Callable[[], Store]) -> None:
    async def body(s: Store) -> None:
        assert await s.get("d1") is None
        assert await s.set_if_absent("d1", "QID1", 30)
        assert not await s.set_if_absent("d1", "QID2", 30)  # the first one stays
        assert await s.get("d1") == "QID1"
        assert await s.set_if_absent("short", "x", 0.2)
        deadline = time.monotonic() + 10
        while await s.get("short") is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await s.get("short") is None
        assert await s.set_if_absent("short", "y", 30)
        await s.ping()

    run(_with(make_store(), body))


def test_sqlite_token_refill_with_a_fake_clock(tmp_path: Path) -> None:
    now = [1000.0]
    prepare_sqlite(str(tmp_path))
    s = SqliteStore(str(tmp_path), clock=lambda: now[0])

    async def body(s: Store) -> None:
        assert [await s.take_token("ip", 3, 60) for _ in range(4)] == [True, True, True, False]
        now[0] += 10  # 3 per 60 s: half a token
        assert not await s.take_token("ip", 3, 60)
        now[0] += 20
        assert await s.take_token("ip", 3, 60)
        now[0] += 10_000  # capped at the burst
        assert [await s.take_token("ip", 3, 60) for _ in range(4)] == [True, True, True, False]

    run(_with(s, body))


def _contend(directory: str, holder: str, start: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def body() -> bool:
        s = SqliteStore(directory)
        while time.time() < start:
            await asyncio.sleep(0.001)
        try:
            return await s.lease_acquire("192.0.2.1", holder, 3, 30)
        finally:
            await s.close()

    out.put(asyncio.run(body()))


def test_sqlite_leases_are_exact_across_processes(tmp_path: Path) -> None:
    prepare_sqlite(str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    start = time.time() + 0.5
    procs = [
        ctx.Process(target=_contend, args=(str(tmp_path), f"h{i}", start, out)) for i in range(8)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(results) == [False] * 5 + [True] * 3


def test_prepare_refuses_an_unusable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=r"state directory .*file/sub: cannot use"):
        prepare(StateSettings(directory=str(blocker / "sub")))


def test_redis_url_password_is_redacted() -> None:
    assert redacted("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redacted("rediss://u:p@127.0.0.1:6380/1") == "rediss://u:***@127.0.0.1:6380/1"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_unreachable_redis_fails_fast_and_recovers(redis_server: RedisServer) -> None:
    port = free_port()  # nothing listens here yet
    now = [0.0]
    settings = StateSettings(url=f"redis://127.0.0.1:{port}/0", timeout=1.0, retry=5.0)
    store = open_store(settings)
    assert isinstance(store, Guarded)
    store._clock = lambda: now[0]  # type: ignore[method-assign]

    async def body() -> None:
        with pytest.raises(StoreError, match=r"127\.0\.0\.1"):
            await store.take_token("ip", 1, 60)
        assert not store.healthy
        with pytest.raises(StoreError, match="unavailable"):  # not even tried
            await store.get("x")
        assert store.failures == 2
        server = RedisServer(port)
        try:
            now[0] += 5.0  # retry period over: the store is tried again, and answers
            assert await store.take_token("ip", 1, 60)
            assert store.healthy
        finally:
            await store.close()
            server.close()

    asyncio.run(body())


def test_admit_is_token_then_lease_in_one_step(make_store: Callable[[], Store]) -> None:
    async def body(s: Store) -> None:
        # cap 2, rate 3 per hour: two sessions, then the cap, then the rate
        assert await s.admit("ip", "a", 2, 30, 3, 3600) == "ok"
        assert await s.admit("ip", "b", 2, 30, 3, 3600) == "ok"
        assert await s.admit("ip", "c", 2, 30, 3, 3600) == "cap"  # took the 3rd token
        await s.lease_release([("ip", "a")])
        assert await s.admit("ip", "d", 2, 30, 3, 3600) == "rate"
        assert await s.lease_count("ip") == 1
        assert await s.admit("other", "e", 0, 30, 0, 60) == "ok"  # no rule: nothing held
        assert await s.lease_count("other") == 0

    run(_with(make_store(), body))


def test_window_counter_counts_then_expires(make_store: Callable[[], Store]) -> None:
    async def body(s: Store) -> None:
        assert [await s.count_event("rl:a", 30) for _ in range(4)] == [1, 2, 3, 4]
        assert await s.count_event("rl:b", 30) == 1  # per key
        assert await s.count_event("rl:short", 0.2) == 1
        deadline = time.monotonic() + 10
        while await s.count_event("rl:short", 0.2) != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)  # a new window once the last one expired
        assert await s.count_event("rl:a", 30) == 5  # the long window is still there

    run(_with(make_store(), body))


def test_sqlite_window_with_a_fake_clock(tmp_path: Path) -> None:
    now = [1000.0]
    prepare_sqlite(str(tmp_path))
    s = SqliteStore(str(tmp_path), clock=lambda: now[0])

    async def body(s: Store) -> None:
        assert [await s.count_event("k", 60) for _ in range(3)] == [1, 2, 3]
        now[0] += 59.9  # the window runs from the first event
        assert await s.count_event("k", 60) == 4
        now[0] += 0.1
        assert await s.count_event("k", 60) == 1

    run(_with(s, body))


def _count(directory: str, start: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def body() -> list[int]:
        s = SqliteStore(directory)
        while time.time() < start:
            await asyncio.sleep(0.001)
        try:
            return [await s.count_event("192.0.2.1", 3600) for _ in range(5)]
        finally:
            await s.close()

    out.put(asyncio.run(body()))


def test_sqlite_window_counter_is_exact_across_processes(tmp_path: Path) -> None:
    prepare_sqlite(str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    start = time.time() + 0.5
    procs = [ctx.Process(target=_count, args=(str(tmp_path), start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(n for r in results for n in r) == list(range(1, 31))  # none twice, none lost
