"""The embedded default store: one SQLite database in WAL mode, shared by the
workers of one host (and by several instances on it that use the same directory).

Why SQLite: it is an existing, well-tested engine in the standard library whose
file locking makes a transaction atomic across processes; WAL mode lets readers go
on while one writer commits, and ``BEGIN IMMEDIATE`` takes the write lock up front,
so a read-modify-write (count the leases, then add one) can never interleave with
another process's. No daemon, no setup, no protocol of our own.

SQLite calls block, so each store runs them on one thread of its own and the event
loop only awaits the result. The file lives on a local disk (``[state] directory``);
it must not be on a network file system, whose locks SQLite cannot trust.
``synchronous = NORMAL``: a power cut may lose the last transactions (a few leases or
duplicate keys), never corrupt the file. Expired rows are removed at most once a
minute, in the same thread.

Times are this host's wall clock (``time.time()``), the one clock all its processes
share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from smtpguard.state.base import Lease, Store, StoreError

T = TypeVar("T")

FILE_NAME = "state.sqlite3"
BUSY_TIMEOUT_MS = 2000  # another process holds the write lock: wait this long at most
PURGE_EVERY = 60.0  # seconds between removals of expired rows

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    key TEXT NOT NULL, holder TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (key, holder)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT PRIMARY KEY, tokens REAL NOT NULL, at REAL NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_expires ON leases (expires);
"""


def database_path(directory: str) -> Path:
    return Path(directory) / FILE_NAME


def prepare(directory: str) -> Path:
    """Create the directory and the database (WAL mode, tables) in this process,
    without a thread: called once before workers fork, so a directory that cannot
    be used fails at start. Raises StoreError with a one-line reason."""
    path = database_path(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        conn = _connect(path)
        conn.close()
    except (OSError, sqlite3.Error) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise StoreError(f"state directory {directory}: cannot use {path}: {reason}") from None
    return path


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"journal_mode WAL not available (got {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(_SCHEMA)
    return conn


class SqliteStore(Store):
    """The embedded store. ``clock`` (wall-clock seconds) is for tests."""

    def __init__(self, directory: str, clock: Callable[[], float] = time.time) -> None:
        self.path = database_path(directory)
        self.name = f"local ({self.path})"
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smtpguard-state")
        self._conn: sqlite3.Connection | None = None
        self._purged = 0.0

    async def _call(self, fn: Callable[[sqlite3.Connection, float], T], write: bool = True) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._run, fn, write)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        except RuntimeError as exc:  # the pool was shut down
            raise StoreError(f"{self.path}: store closed ({exc})") from None

    def _run(self, fn: Callable[[sqlite3.Connection, float], T], write: bool) -> T:
        """In the store's thread: one transaction; a writing one takes the write lock
        first, so its reads and writes are one atomic step across processes."""
        if self._conn is None:
            self._conn = _connect(self.path)
        conn = self._conn
        now = self._clock()
        if not write:  # one SELECT: atomic by itself, and WAL readers never wait
            return fn(conn, now)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, now)
            if now - self._purged >= PURGE_EVERY:
                self._purged = now
                for table in ("leases", "buckets", "kv", "counters"):
                    conn.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    async def lease_acquire(self, key: str, holder: str, cap: int, ttl: float) -> bool:
        return await self._call(lambda c, now: _acquire(c, now, key, holder, cap, ttl))

    async def admit(
        self, key: str, holder: str, cap: int, ttl: float, rate: int, period: float
    ) -> str:
        def op(c: sqlite3.Connection, now: float) -> str:
            if rate > 0 and not _token(c, now, key, rate, period):
                return "rate"
            if cap > 0 and not _acquire(c, now, key, holder, cap, ttl):
                return "cap"
            return "ok"

        return await self._call(op)

    async def lease_renew(self, leases: Sequence[Lease], ttl: float) -> None:
        if not leases:
            return

        def op(c: sqlite3.Connection, now: float) -> None:
            c.executemany(
                "UPDATE leases SET expires = ? WHERE key = ? AND holder = ?",
                [(now + ttl, k, h) for k, h in leases],
            )

        await self._call(op)

    async def lease_release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return

        def op(c: sqlite3.Connection, now: float) -> None:
            c.executemany("DELETE FROM leases WHERE key = ? AND holder = ?", list(leases))

        await self._call(op)

    async def lease_count(self, key: str) -> int:
        def op(c: sqlite3.Connection, now: float) -> int:
            row = c.execute(
                "SELECT COUNT(*) FROM leases WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            return int(row[0])

        return await self._call(op, write=False)

    async def take_token(self, key: str, capacity: int, period: float) -> bool:
        return await self._call(lambda c, now: _token(c, now, key, capacity, period))

    async def count_event(self, key: str, period: float) -> int:
        def op(c: sqlite3.Connection, now: float) -> int:
            row = c.execute(
                "SELECT count FROM counters WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            if row is None:  # no window, or an expired one: this event starts one
                c.execute("INSERT OR REPLACE INTO counters VALUES (?, 1, ?)", (key, now + period))
                return 1
            c.execute("UPDATE counters SET count = count + 1 WHERE key = ?", (key,))
            return int(row[0]) + 1

        return await self._call(op)

    async def set_if_absent(self, key: str, value: str, ttl: float) -> bool:
        def op(c: sqlite3.Connection, now: float) -> bool:
            c.execute("DELETE FROM kv WHERE key = ? AND expires <= ?", (key, now))
            cur = c.execute("INSERT OR IGNORE INTO kv VALUES (?, ?, ?)", (key, value, now + ttl))
            return cur.rowcount == 1

        return await self._call(op)

    async def get(self, key: str) -> str | None:
        def op(c: sqlite3.Connection, now: float) -> str | None:
            row = c.execute(
                "SELECT value FROM kv WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._call(op, write=False)

    async def ping(self) -> None:
        await self._call(lambda c, now: c.execute("SELECT 1").fetchone(), write=False)

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        with contextlib.suppress(RuntimeError):
            await loop.run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=False)


def _acquire(
    c: sqlite3.Connection, now: float, key: str, holder: str, cap: int, ttl: float
) -> bool:
    c.execute("DELETE FROM leases WHERE key = ? AND expires <= ?", (key, now))
    held = c.execute(
        "UPDATE leases SET expires = ? WHERE key = ? AND holder = ?", (now + ttl, key, holder)
    ).rowcount
    if held:
        return True
    (live,) = c.execute("SELECT COUNT(*) FROM leases WHERE key = ?", (key,)).fetchone()
    if live >= cap:
        return False
    c.execute("INSERT INTO leases VALUES (?, ?, ?)", (key, holder, now + ttl))
    return True


def _token(c: sqlite3.Connection, now: float, key: str, capacity: int, period: float) -> bool:
    row = c.execute("SELECT tokens, at FROM buckets WHERE key = ?", (key,)).fetchone()
    cap = float(capacity)
    tokens = cap if row is None else min(cap, row[0] + max(0.0, now - row[1]) * cap / period)
    ok = tokens >= 1.0
    if ok:
        tokens -= 1.0
    # Full again after `period` seconds: a row past that says nothing.
    c.execute(
        "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)", (key, tokens, now, now + period)
    )
    return ok
