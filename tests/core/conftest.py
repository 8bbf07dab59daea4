"""Every core conversation is re-cut: whatever a test fed a session (through the
harness or a playbook), it is run again with every data event cut at random points
(hypothesis chooses them) and one byte at a time, and must give the same actions
modulo output chunking (docs/design.md#architecture; see ``playbook.differences`` for what that
allows). Conversations under the PIX split-EOD emulation are segmentation-dependent
by design and are left out.

A conversation recorded with every trace on is also run again whole with fewer
traces asked for (``TRACE_*`` masks, as a protocol log asks for the entries its
layout writes): it must give the same actions with only the unasked traces left out."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.core.actions import (
    TRACE_ALL,
    TRACE_CLIENT,
    TRACE_SERVER,
    TRACE_SIZE,
    Action,
    Direction,
    Trace,
)
from smtpguard.core.events import Event
from smtpguard.core.policy import Policy
from tests.core.harness import Harness
from tests.core.playbook import Playbook, bytewise, differences, random_cutter, replay

RECUT_EXAMPLES = 12
BYTEWISE_LIMIT = 64 * 1024  # larger conversations are re-cut at random points only
STATS = {"conversations": 0, "examples": 0}


def _recorded() -> list[tuple[Policy, list[tuple[Event, float]], list[Action], bool, object]]:
    out = []
    for h in Harness.instances:
        out.append((h.policy, h.events, h.actions, h.trace, h.peer))
    for p in Playbook.instances:
        s = p.session
        out.append((s.policy, p.events, p.actions, s.out.mask, s.link.peer))
    return out


def _traced(t: Trace, mask: int) -> bool:
    if t.size is not None:
        return bool(mask & TRACE_SIZE)
    if t.direction in (Direction.CLIENT_TO_GW, Direction.GW_TO_CLIENT):
        return bool(mask & TRACE_CLIENT)
    return bool(mask & TRACE_SERVER)


def _check(policy, events, actions, trace, peer) -> None:  # type: ignore[no-untyped-def]
    def same(cutter) -> None:  # type: ignore[no-untyped-def]
        why = differences(actions, replay(policy, events, cutter, trace=trace, peer=peer))
        if why is not None:
            raise AssertionError("re-cut conversation differs: " + why)

    if trace is True or trace == TRACE_ALL:
        # A session asked for fewer traces builds exactly the others' actions, in
        # the same order, without the traces it was not asked for.
        for mask in (0, TRACE_CLIENT, TRACE_SERVER | TRACE_SIZE):
            whole = replay(policy, events, lambda data: (), trace=mask, peer=peer)
            want = [a for a in actions if not isinstance(a, Trace) or _traced(a, mask)]
            if whole != want:
                raise AssertionError(f"trace mask {mask}: actions differ from the full trace's")

    size = sum(len(getattr(e, "data", b"")) for e, _ in events)
    if size <= BYTEWISE_LIMIT:
        same(bytewise)
        STATS["examples"] += 1

    @settings(
        max_examples=RECUT_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(seed=st.integers(0, 2**32 - 1))
    def recut(seed: int) -> None:
        STATS["examples"] += 1
        same(random_cutter(random.Random(seed)))

    recut()


@pytest.fixture(autouse=True)
def recut_every_conversation(request: pytest.FixtureRequest) -> Iterator[None]:
    Harness.instances.clear()
    Playbook.instances.clear()
    yield
    if getattr(request.function, "is_hypothesis_test", False):
        return  # already random; its many conversations are not re-run
    if request.node.get_closest_marker("no_recut"):
        return
    for policy, events, actions, trace, peer in _recorded():
        if policy.emulation.split_eod_bug or not events:
            continue
        STATS["conversations"] += 1
        _check(policy, events, actions, trace, peer)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if STATS["conversations"]:
        terminalreporter.write_line(
            f"re-cut: {STATS['conversations']} core conversations, "
            f"{STATS['examples']} segmentations run"
        )
