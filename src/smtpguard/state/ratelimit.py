"""Shared rate limits, the shell's part: the store counts the core asks for.

The core (``smtpguard.core.ratelimit``) emits ``RateCheck(check, key, rate, period)``
for a finding whose action is ``rate-limit`` and holds what it concerns (the MAIL or
RCPT command, or the final dot) until the answer. :meth:`RateLimits.check` counts
the event in the store in a task of its own (the event loop never waits) and hands
``conn.rate_answer(count <= rate)`` back. A store that fails or is slower than
``[state] timeout`` answers None: the core lets the command or message through
(limits fail open), and ``SG-STATE-FAIL-OPEN`` is logged and counted.

The store is opened for this only when a check's action is ``rate-limit``
(:func:`uses_rate_limit`); a session whose checks never fire asks nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from smtpguard.core.actions import PolicyEvent, RateCheck
from smtpguard.core.policy import Policy, Verdict
from smtpguard.state.base import StoreError
from smtpguard.state.guard import FAIL_OPEN, Guarded, PolicyEvents
from smtpguard.state.tasks import TaskSet

log = logging.getLogger("smtpguard.gateway")


class _Conn(Protocol):
    sid: str
    peer: str

    def rate_answer(self, allowed: bool | None) -> None: ...


def uses_rate_limit(policy: Policy) -> bool:
    """True when any check's action is ``rate-limit``."""
    checks = policy.checks
    for field in dataclasses.fields(checks):
        value = getattr(checks, field.name)
        if getattr(value, "action", value) is Verdict.RATE_LIMIT:
            return True
    return False


class RateLimits:
    def __init__(self, store: Guarded) -> None:
        self.store = store
        self._tasks = TaskSet("rate-limit")

    def check(self, events: PolicyEvents, conn: _Conn, a: RateCheck) -> None:
        self._tasks.spawn(self._check(events, conn, a))

    async def _check(self, events: PolicyEvents, conn: _Conn, a: RateCheck) -> None:
        allowed = None
        try:
            allowed = await self.store.count_event(a.key, a.period) <= a.rate
        except StoreError as exc:
            events.policy_event(
                conn.sid, conn.peer, PolicyEvent(FAIL_OPEN, f"{a.check} rate not counted: {exc}")
            )
        except Exception:  # a bug: still answer, or the session would wait forever
            log.exception("%s rate-limit count failed, allowed", conn.sid)
        conn.rate_answer(allowed)

    async def close(self) -> None:
        """Let counts under way finish (bounded by the store's timeout)."""
        await self._tasks.wait(self.store.timeout + 1.0)
