"""The message relay alone, without a session: fed one message's bytes, it relays
them into an action list and returns where the end of data is, or why reading
stops. Whole input, one byte at a time, and with trailing data."""

from __future__ import annotations

import dataclasses

import pytest

from smtpguard.core.actions import Action, PolicyEvent, ToServer
from smtpguard.core.checks import Rates
from smtpguard.core.dedupe import Tracker
from smtpguard.core.output import Output
from smtpguard.core.policy import Emulation, Policy
from smtpguard.core.relay import MORE, SPLIT_EOD, MessageRelay

POLICY = Policy(hostname="gw.example.test")
MSG = b"Subject: hi\r\n\r\nline one\r\n..stuffed\r\n.\r\n"
AFTER = b"QUIT\r\n"


def run(relay: MessageRelay, out: Output, chunks: list[bytes]) -> tuple[bytes, int, bytes]:
    """(bytes relayed, the result that ended it, the unread rest of that chunk)."""
    for chunk in chunks:
        end = relay.feed(chunk, 0.0)
        if end != MORE:
            rest = chunk[end:] if end >= 0 else b""
            return relayed(out.actions), end, rest
    return relayed(out.actions), MORE, b""


def relayed(actions: list[Action]) -> bytes:
    return b"".join(bytes(a.data) for a in actions if isinstance(a, ToServer))


def cuts(data: bytes) -> list[list[bytes]]:
    return [[data], [data[i : i + 1] for i in range(len(data))]]


@pytest.mark.parametrize("chunks", cuts(MSG) + cuts(MSG + AFTER))
def test_a_clean_message_is_relayed_as_received(chunks: list[bytes]) -> None:
    out = Output(False)
    relay = MessageRelay(POLICY, out, Rates())
    sent, end, rest = run(relay, out, chunks)
    assert sent == MSG and end >= 0 and relay.refusal is None
    assert relay.size == len(MSG)
    whole = b"".join(chunks)
    if whole.endswith(AFTER) and len(chunks) == 1:
        assert rest == AFTER  # trailing data is the session's, unread


@pytest.mark.parametrize("chunks", cuts(b"bad\rline\r\n.\r\n"))
def test_a_bare_cr_refuses_the_message_and_asks_for_the_upstream_abort(
    chunks: list[bytes],
) -> None:
    out = Output(False)
    relay = MessageRelay(POLICY, out, Rates())
    aborted = False
    for chunk in chunks:
        end = relay.feed(chunk, 0.0)
        aborted = aborted or relay.abort_upstream
        relay.abort_upstream = False
        if end >= 0:
            break
    assert end >= 0 and aborted and relay.refusal is not None
    assert relayed(out.actions) == b"bad"  # exactly the bytes before the bad one
    assert any(isinstance(a, PolicyEvent) for a in out.actions)


@pytest.mark.parametrize("chunks", cuts(MSG))
def test_with_dedupe_the_terminator_is_held_for_the_lookup(chunks: list[bytes]) -> None:
    out = Output(False)
    tracker = Tracker()
    tracker.data_started()
    relay = MessageRelay(POLICY, out, Rates(), tracker)
    sent, end, _ = run(relay, out, chunks)
    assert end >= 0 and sent + tracker.held == MSG and tracker.held


def test_the_pix_split_eod_bug_stops_reading() -> None:
    policy = dataclasses.replace(POLICY, emulation=Emulation(split_eod_bug=True))
    out = Output(False)
    relay = MessageRelay(policy, out, Rates())
    assert relay.feed(b"x\r\n", 0.0) == MORE
    assert relay.feed(b".\r\n", 0.0) == SPLIT_EOD
