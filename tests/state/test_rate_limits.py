"""RateLimits (the shell's part of shared rate limits) with a fake connection: the
count answers the core's RateCheck, and a store that fails answers None (allowed)
with SG-STATE-FAIL-OPEN."""

from __future__ import annotations

import asyncio
from pathlib import Path

from smtpguard.core.actions import PolicyEvent, RateCheck
from smtpguard.core.policy import Check, Checks, PatternCheck, Policy, Verdict
from smtpguard.state import FAIL_OPEN, Guarded
from smtpguard.state.ratelimit import RateLimits, uses_rate_limit
from smtpguard.state.sqlite_store import SqliteStore, prepare


class Conn:
    sid, peer = "00000001", "192.0.2.7:4000"

    def __init__(self) -> None:
        self.answers: list[bool | None] = []
        self.got = asyncio.Event()

    def rate_answer(self, allowed: bool | None) -> None:
        self.answers.append(allowed)
        self.got.set()


class Events:
    def __init__(self) -> None:
        self.events: list[PolicyEvent] = []

    def policy_event(self, sid: str, peer: str, ev: PolicyEvent) -> None:
        self.events.append(ev)


async def ask(rates: RateLimits, events: Events, check: RateCheck) -> bool | None:
    conn = Conn()
    rates.check(events, conn, check)
    await asyncio.wait_for(conn.got.wait(), 10)
    return conn.answers[0]


def test_counts_answer_the_core_and_a_failing_store_allows(tmp_path: Path) -> None:
    prepare(str(tmp_path))

    async def body() -> None:
        store = Guarded(SqliteStore(str(tmp_path)), retry=60.0)
        rates = RateLimits(store)
        events = Events()
        check = RateCheck("rcpt_count", "rcpt_count:client:192.0.2.7", 2, 3600.0)
        assert [await ask(rates, events, check) for _ in range(3)] == [True, True, False]
        other = RateCheck("rcpt_count", "rcpt_count:client:192.0.2.8", 2, 3600.0)
        assert await ask(rates, events, other) is True
        assert events.events == []
        await store.close()  # now every operation fails: limits fail open
        assert await ask(rates, events, check) is None
        assert [e.id for e in events.events] == [FAIL_OPEN]
        assert "rcpt_count rate not counted" in events.events[0].message
        await rates.close()

    asyncio.run(body())


def test_uses_rate_limit() -> None:
    assert not uses_rate_limit(Policy())
    limit = Checks(rcpt_count=Check(Verdict.RATE_LIMIT, 5, rate=1))
    assert uses_rate_limit(Policy(checks=limit))
    pattern = Checks(sender_pattern=PatternCheck(Verdict.RATE_LIMIT, ("x",), rate=1))
    assert uses_rate_limit(Policy(checks=pattern))
