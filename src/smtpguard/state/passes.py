"""The greeting wait's pass cache, the shell's part (``[screen] greet_wait``).

The core emits ``PassLookup`` when a session starts with the greeting wait on: the
store is asked, in a task of its own, whether the client's address waited for a
whole greeting within ``pass_ttl``, and the answer goes back with
``conn.pass_answer(passed)``; the core sends the server's greeting at once for a
passed address. ``PassRecord`` (the client waited and said nothing) stores the
address for ``pass_ttl`` seconds. In the embedded store every worker of the host
sees it; with Redis every instance does. A store that fails answers "not passed"
(the client waits, as a new one does) and ``SG-STATE-FAIL-OPEN`` is logged.
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

    def pass_answer(self, passed: bool) -> None: ...


def pass_key(address: str) -> str:
    return f"pregreet-pass:{address}"


class Passes:
    def __init__(self, store: Guarded) -> None:
        self.store = store
        self._tasks = TaskSet("pregreet")

    def lookup(self, events: PolicyEvents, conn: _Conn, address: str) -> None:
        self._tasks.spawn(self._lookup(events, conn, address))

    async def _lookup(self, events: PolicyEvents, conn: _Conn, address: str) -> None:
        found = None
        try:
            found = await self.store.get(pass_key(address))
        except StoreError as exc:
            events.policy_event(
                conn.sid, conn.peer, PolicyEvent(FAIL_OPEN, f"greeting pass not looked up: {exc}")
            )
        conn.pass_answer(found is not None)

    def record(self, events: PolicyEvents, conn: _Conn, address: str, ttl: float) -> None:
        self._tasks.spawn(self._record(events, conn, address, ttl))

    async def _record(self, events: PolicyEvents, conn: _Conn, address: str, ttl: float) -> None:
        try:
            await self.store.set_if_absent(pass_key(address), "1", ttl)
        except StoreError as exc:
            events.policy_event(
                conn.sid, conn.peer, PolicyEvent(FAIL_OPEN, f"greeting pass not recorded: {exc}")
            )

    async def close(self) -> None:
        await self._tasks.wait(self.store.timeout + 1.0)
