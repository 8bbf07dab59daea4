"""Events and actions are values: equal by class and fields, hashable, shown as a
dataclass shows itself, read-only once compiled (core/actions.py says why they are
native classes and not frozen dataclasses)."""

from __future__ import annotations

from typing import get_args

import pytest

from smtpguard import core_build
from smtpguard.core import actions as a
from smtpguard.core import events as e
from smtpguard.core.dedupe import DedupeLookup, DedupeRecord

C2G = a.Direction.CLIENT_TO_GW

# (value, an equal value built anew, a value of the same class that differs or None)
SAMPLES: list[tuple[object, object, object | None]] = [
    (e.Start(), e.Start(), None),
    (e.ClientData(b"HELO x\r\n"), e.ClientData(b"HELO x\r\n"), e.ClientData(b"QUIT\r\n")),
    (e.ClientEof(), e.ClientEof(), None),
    (e.ServerConnected(), e.ServerConnected(), None),
    (e.ServerData(b"250 ok\r\n"), e.ServerData(b"250 ok\r\n"), e.ServerData(b"221 bye\r\n")),
    (e.ServerClosed(), e.ServerClosed(), None),
    (e.TimerFired(), e.TimerFired(), None),
    (e.TlsDone(e.Side.CLIENT), e.TlsDone(e.Side.CLIENT), e.TlsDone(e.Side.SERVER)),
    (e.TlsFailed(e.Side.SERVER), e.TlsFailed(e.Side.SERVER), e.TlsFailed(e.Side.CLIENT)),
    (e.DedupeAnswer("4TqAbC1"), e.DedupeAnswer("4TqAbC1"), e.DedupeAnswer(None)),
    (e.RateAnswer(True), e.RateAnswer(True), e.RateAnswer(None)),
    (e.PassAnswer(True), e.PassAnswer(True), e.PassAnswer(False)),
    (e.Shutdown(), e.Shutdown(), None),
    (e.Cut(), e.Cut(), None),
    (a.ToServer(b"MAIL"), a.ToServer(memoryview(b"MAIL")), a.ToServer(b"RCPT")),
    (a.ToClient(b"250 ok\r\n"), a.ToClient(b"250 ok\r\n"), a.ToClient(b"")),
    (a.OpenServer(), a.OpenServer(), None),
    (a.CloseServer(), a.CloseServer(abort=False), a.CloseServer(abort=True)),
    (a.ServerOutcome(True), a.ServerOutcome(True, ""), a.ServerOutcome(False, "greeting 421")),
    (a.CloseClient(), a.CloseClient(reset=False), a.CloseClient(reset=True)),
    (a.StartTls("client"), a.StartTls(e.Side.CLIENT), a.StartTls("server")),
    (a.SetTimer(10.5), a.SetTimer(10.5), a.SetTimer(None)),
    (a.Trace(C2G, "HELO x"), a.Trace(C2G, "HELO x", None, None, None), a.Trace(C2G, size=3)),
    (a.PolicyEvent("id", "m"), a.PolicyEvent("id", "m", "log"), a.PolicyEvent("id", "m", "reject")),
    (a.RateCheck("c", "k", 5, 60.0), a.RateCheck("c", "k", 5, 60), a.RateCheck("c", "k", 6, 60.0)),
    (DedupeLookup("ab"), DedupeLookup("ab"), DedupeLookup("cd")),
    (DedupeRecord("ab", "q1"), DedupeRecord("ab", "q1"), DedupeRecord("ab", "q2")),
    (a.PassLookup(), a.PassLookup(), None),
    (a.PassRecord(60.0), a.PassRecord(60), a.PassRecord(61.0)),
]


def test_every_event_and_action_is_sampled() -> None:
    classes = set(get_args(e.Event)) | set(get_args(a.Action))
    assert {type(v) for v, _, _ in SAMPLES} == classes


@pytest.mark.parametrize(("value", "same", "other"), SAMPLES, ids=lambda v: type(v).__name__)
def test_equal_by_class_and_fields(value: object, same: object, other: object | None) -> None:
    assert value == same
    assert not value != same  # noqa: SIM202 - __ne__ too
    assert hash(value) == hash(same)
    assert value in {same}
    if other is not None:
        assert value != other
        assert not value == other  # noqa: SIM201 - __eq__ too
    assert value.__eq__(object()) is NotImplemented
    assert value != (), "not equal to a value of another type"
    others = [v for v, _, _ in SAMPLES if type(v) is not type(value)]
    assert all(value != v for v in others)


def test_repr_is_the_dataclass_one() -> None:
    assert repr(e.Start()) == "Start()"
    assert repr(e.ServerData(b"250 ok\r\n")) == "ServerData(data=b'250 ok\\r\\n')"
    assert repr(e.TlsDone(e.Side.CLIENT)) == "TlsDone(side=<Side.CLIENT: 'client'>)"
    assert repr(a.ToServer(b"x")) == "ToServer(data=b'x')"
    assert repr(a.CloseServer()) == "CloseServer(abort=False)"
    assert repr(a.Trace(C2G, "HELO x", "HELO")) == (
        "Trace(direction=<Direction.CLIENT_TO_GW: 'client>gw'>, line='HELO x', verb='HELO', "
        "code=None, size=None)"
    )
    assert repr(a.PolicyEvent("i", "m")) == "PolicyEvent(id='i', message='m', action='log')"
    assert (
        repr(a.RateCheck("c", "k", 5, 60.0)) == "RateCheck(check='c', key='k', rate=5, period=60.0)"
    )
    assert repr(DedupeRecord("ab", "q")) == "DedupeRecord(key='ab', queue_id='q')"


def test_no_instance_dict() -> None:
    """``__slots__`` (pure Python) or a native layout (compiled): no stray attributes."""
    for value, _, _ in SAMPLES:
        assert not hasattr(value, "__dict__"), type(value).__name__


@pytest.mark.skipif(core_build() != "compiled", reason="read-only fields need the compiled core")
def test_fields_are_read_only_when_compiled() -> None:
    t = a.Trace(C2G, "HELO x")
    with pytest.raises(AttributeError):
        setattr(t, "line", "QUIT")  # noqa: B010 - mypy rejects the plain assignment
    assert t.line == "HELO x"
