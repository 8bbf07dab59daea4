"""Store operations the event loop does not wait for.

Limits, rate counts and duplicate keys each run their store calls in tasks of their
own. :class:`TaskSet` is what all three need from those tasks: a reference kept
until each is done (the loop holds only a weak one), a failure logged rather than
lost, and a bounded wait for the ones still under way at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

log = logging.getLogger("smtpguard.gateway")  # the logger its users wrote to


class TaskSet:
    def __init__(self, what: str) -> None:
        self._what = what  # names the tasks in the log: "dedupe", "rate-limit", ...
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[None]]:
        return iter(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task failed", self._what, exc_info=task.exception())

    async def wait(self, timeout: float) -> None:
        """Let the tasks under way finish, for at most ``timeout`` seconds."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
