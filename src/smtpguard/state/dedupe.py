"""Duplicate suppression, the shell's part: the store round trips the core asks for.

The core (``smtpguard.core.dedupe``) computes the key while the message streams and,
at the client's end of data, emits ``DedupeLookup``: :meth:`Dedupe.lookup` asks the
store in a task of its own (the event loop never waits) and hands the answer back
with ``conn.dedupe_answer(queue_id or None)``; the core holds only the final dot
meanwhile. A store that fails or is slower than ``[state] timeout`` answers None: the
message is relayed as if dedupe were off, and ``SG-STATE-FAIL-OPEN`` is logged.
``DedupeRecord`` (after the server's 250) stores the key with the queue ID for the
window; its failure is logged the same way and loses nothing but the memory of
that message.
"""

from __future__ import annotations

from typing import Protocol

from smtpguard.core.actions import PolicyEvent
from smtpguard.state.base import StoreError
from smtpguard.state.guard import FAIL_OPEN, Guarded, PolicyEvents
from smtpguard.state.tasks import TaskSet


class _Conn(Protocol):
    sid: str
    peer: str

    def dedupe_answer(self, queue_id: str | None) -> None: ...


class Dedupe:
    def __init__(self, store: Guarded, window: float) -> None:
        self.store = store
        self.window = window
        self._tasks = TaskSet("dedupe")

    def lookup(self, events: PolicyEvents, conn: _Conn, key: str) -> None:
        self._tasks.spawn(self._lookup(events, conn, key))

    async def _lookup(self, events: PolicyEvents, conn: _Conn, key: str) -> None:
        found = None
        try:
            found = await self.store.get(key)
        except StoreError as exc:
            events.policy_event(
                conn.sid, conn.peer, PolicyEvent(FAIL_OPEN, f"duplicate check skipped: {exc}")
            )
        conn.dedupe_answer(found)

    def record(self, events: PolicyEvents, conn: _Conn, key: str, queue_id: str) -> None:
        self._tasks.spawn(self._record(events, conn, key, queue_id))

    async def _record(self, events: PolicyEvents, conn: _Conn, key: str, queue_id: str) -> None:
        try:
            await self.store.set_if_absent(key, queue_id, self.window)
        except StoreError as exc:
            events.policy_event(
                conn.sid, conn.peer, PolicyEvent(FAIL_OPEN, f"accepted message not recorded: {exc}")
            )

    async def close(self) -> None:
        """Let records under way finish (bounded by the store's timeout)."""
        await self._tasks.wait(self.store.timeout + 1.0)
