"""Playbooks: a core test as the exact sequence of events in and actions out.

In the spirit of mitmproxy's ``Playbook``: ``>>`` feeds an event, ``<<`` expects an
action, and the playbook is checked when it is asserted::

    assert (
        Playbook(Session(policy))
        >> Start() << OpenServer()
        >> ServerConnected()
        >> ServerData(b"220 mx ESMTP\\r\\n") << ToClient(b"220 gw ESMTP\\r\\n")
    )

Timers and protocol-log traces are left out unless ``timers=True`` / ``traces=True``.

Every conversation a core test drives (through a :class:`~tests.core.harness.Harness`
or a playbook) is recorded, and ``tests/core/conftest.py`` runs it again with each
``ClientData``/``ServerData`` event cut at random points, and one byte at a time, and
requires the same actions modulo how output bytes are chunked (:func:`canonical`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

from smtpguard.core.actions import (
    Action,
    CloseServer,
    OpenServer,
    SetTimer,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.events import ClientData, Event, ServerData
from smtpguard.core.policy import Policy
from smtpguard.core.session import Session


def canonical(actions: Iterable[Action], timers: bool = True) -> list[Action]:
    """Actions with consecutive writes to the same side joined (as the peer would
    read them), memoryviews as bytes; SetTimer left out unless ``timers``."""
    out: list[Action] = []
    for a in actions:
        if isinstance(a, SetTimer) and not timers:
            continue
        if isinstance(a, ToServer):
            data = bytes(a.data)
            if out and isinstance(out[-1], ToServer):
                out[-1] = ToServer(bytes(out[-1].data) + data)
            elif data:
                out.append(ToServer(data))
            continue
        if isinstance(a, ToClient):
            if out and isinstance(out[-1], ToClient):
                out[-1] = ToClient(out[-1].data + a.data)
            elif a.data:
                out.append(ToClient(a.data))
            continue
        out.append(a)
    return out


def channels(actions: Iterable[Action]) -> tuple[bytes, list[tuple[bytes, bool]], list[Action]]:
    """What the peers see: the client's byte stream, each upstream connection's byte
    stream (with whether it ended in an abort), and every other action in order."""
    client = bytearray()
    servers: list[tuple[bytearray, list[bool]]] = [(bytearray(), [False])]
    others: list[Action] = []
    for a in actions:
        if isinstance(a, ToClient):
            client += a.data
        elif isinstance(a, ToServer):
            servers[-1][0].extend(bytes(a.data))
        else:
            if isinstance(a, CloseServer) and a.abort:
                servers[-1][1][0] = True
            if isinstance(a, OpenServer):
                servers.append((bytearray(), [False]))
            others.append(a)
    return bytes(client), [(bytes(b), flag[0]) for b, flag in servers], others


def differences(want: list[Action], got: list[Action]) -> str | None:
    """Why two runs of one conversation differ beyond output chunking (None: they do
    not). A connection the gateway aborted after refusing a message part-way may
    have more or less of the message's clean prefix relayed, depending on when a
    content check could tell (the server discards it either way): there one stream
    must be a prefix of the other. Everything else must be equal."""
    wc, ws, wo = channels(want)
    gc, gs, go = channels(got)
    if wc != gc:
        return f"client stream differs:\n  whole:  {wc[-300:]!r}\n  re-cut: {gc[-300:]!r}"
    if len(ws) != len(gs):
        return f"{len(ws)} upstream connections whole, {len(gs)} re-cut"
    for i, ((wb, wa), (gb, ga)) in enumerate(zip(ws, gs, strict=True)):
        if wb == gb and wa == ga:
            continue
        if wa and ga and (wb.startswith(gb) or gb.startswith(wb)):
            continue
        return f"upstream {i} stream differs:\n  whole:  {wb[-300:]!r}\n  re-cut: {gb[-300:]!r}"
    if wo != go:
        i = next((i for i, (a, b) in enumerate(zip(wo, go, strict=False)) if a != b), None)
        i = min(len(wo), len(go)) if i is None else i
        return f"actions differ at {i}:\n  whole:  {wo[i : i + 3]!r}\n  re-cut: {go[i : i + 3]!r}"
    return None


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    marks = sorted({p for p in points if 0 < p < len(data)})
    parts, prev = [], 0
    for p in marks:
        parts.append(data[prev:p])
        prev = p
    parts.append(data[prev:])
    return parts


Cutter = Callable[[bytes], Iterable[int]]


def replay(
    policy: Policy,
    events: Sequence[tuple[Event, float]],
    cutter: Cutter,
    *,
    trace: bool | int = False,
    peer: tuple[str, int] | None = None,
) -> list[Action]:
    """Run ``events`` on a fresh session, every data event cut where ``cutter`` says."""
    session = Session(policy, trace=trace, peer=peer)
    out: list[Action] = []
    for event, now in events:
        if isinstance(event, ClientData | ServerData) and len(event.data) > 1:
            for part in cut(event.data, cutter(event.data)):
                out += session.handle(type(event)(part), now)
        else:
            out += session.handle(event, now)
    return out


def random_cutter(rnd: random.Random, max_cuts: int = 6) -> Cutter:
    def cutter(data: bytes) -> list[int]:
        k = rnd.randint(0, min(max_cuts, len(data) - 1))
        return rnd.sample(range(1, len(data)), k)

    return cutter


def bytewise(data: bytes) -> range:
    return range(1, len(data))


class At:
    """Not an event: ``>> At(t)`` makes the events after it happen at time ``t``."""

    def __init__(self, now: float) -> None:
        self.now = now


class Playbook:
    """Events in, exact actions out. See the module docstring."""

    instances: list[Playbook] = []  # created during the current test (for re-cutting)

    def __init__(
        self, session: Session, *, timers: bool = False, traces: bool = False, now: float = 0.0
    ) -> None:
        self.session = session
        self.timers = timers
        self.traces = traces
        self.now = now
        self.script: list[tuple[str, Event | Action | float]] = []
        self.events: list[tuple[Event, float]] = []
        self.actions: list[Action] = []
        Playbook.instances.append(self)

    def __rshift__(self, event: Event | At) -> Playbook:
        if isinstance(event, At):
            self.script.append(("now", event.now))
        else:
            self.script.append(("in", event))
        return self

    def __lshift__(self, action: Action) -> Playbook:
        self.script.append(("out", action))
        return self

    def __bool__(self) -> bool:
        expected: list[Action] = []
        got: list[Action] = []
        for kind, item in self.script:
            if kind == "now":
                assert isinstance(item, float | int)
                self.now = float(item)
            elif kind == "in":
                event = item
                self.events.append((event, self.now))  # type: ignore[arg-type]
                actions = self.session.handle(event, self.now)  # type: ignore[arg-type]
                self.actions += actions
                got += self._shown(actions)
            else:
                expected.append(item)  # type: ignore[arg-type]
        got_c, expected_c = canonical(got), canonical(expected)
        if got_c != expected_c:
            raise AssertionError(_diff(expected_c, got_c))
        return True

    def _shown(self, actions: list[Action]) -> list[Action]:
        return [
            a
            for a in actions
            if (self.timers or not isinstance(a, SetTimer))
            and (self.traces or not isinstance(a, Trace))
        ]


def _diff(expected: list[Action], got: list[Action]) -> str:
    lines = ["playbook mismatch:"]
    for i in range(max(len(expected), len(got))):
        e = expected[i] if i < len(expected) else "-"
        g = got[i] if i < len(got) else "-"
        mark = "  " if e == g else "!!"
        lines.append(f"{mark} expected {e!r}\n   got      {g!r}")
    return "\n".join(lines)
