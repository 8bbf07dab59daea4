"""Flow control alone: what the core is fed per turn, and when the client is read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smtpguard.gateway.flow import BACKLOG_HIGH, FEED_BUDGET, FEED_SLICE, Flow


def drain_turn(flow: Flow, bulk: bool = False) -> list[bytes]:
    flow.new_turn()
    out = []
    while chunk := flow.take(bulk):
        out.append(chunk)
    return out


def test_whole_input_in_slices_within_the_budget() -> None:
    flow = Flow()
    data = bytes(range(256)) * 200  # 51,200 octets
    flow.hold(data)
    first = drain_turn(flow)
    assert [len(c) for c in first] == [FEED_SLICE] * (FEED_BUDGET // FEED_SLICE)
    assert flow.next_turn
    fed = b"".join(first)
    while flow.held:
        fed += b"".join(drain_turn(flow))
    assert fed == data and not flow.next_turn


def test_one_byte_at_a_time() -> None:
    flow = Flow()
    fed = b""
    data = b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n"
    for i in range(len(data)):
        flow.hold(data[i : i + 1])
        fed += b"".join(drain_turn(flow))
    assert fed == data and not flow.held


def test_trailing_data_waits_for_the_next_turn_and_bulk_takes_all() -> None:
    flow = Flow()
    flow.hold(b"x" * (FEED_BUDGET + 5))
    assert sum(map(len, drain_turn(flow))) == FEED_BUDGET
    assert flow.held == b"xxxxx" and flow.next_turn
    flow.hold(b"y" * 3 * FEED_BUDGET)
    assert drain_turn(flow, bulk=True) == [b"xxxxx" + b"y" * 3 * FEED_BUDGET]


def test_nothing_is_fed_while_the_client_does_not_read_its_replies() -> None:
    flow = Flow()
    flow.hold(b"NOOP\r\n")
    flow.client_full = True
    assert drain_turn(flow) == [] and drain_turn(flow, bulk=True) == []
    assert not flow.next_turn  # resume_writing schedules the feed, not the budget
    assert flow.take_all() == b"NOOP\r\n" and not flow.held  # EOF: whatever the marks say


def test_reading_follows_held_bytes_marks_and_backlog() -> None:
    flow = Flow()
    assert flow.reading and not flow.update_reading(0)
    flow.hold(b"a")
    assert flow.update_reading(0) and not flow.reading
    assert not flow.update_reading(0)  # no change, nothing to do
    flow.take_all()
    assert flow.update_reading(0) and flow.reading
    assert flow.update_reading(BACKLOG_HIGH + 1) and not flow.reading
    assert flow.update_reading(BACKLOG_HIGH) and flow.reading
    for mark in ("up_full", "client_full"):
        setattr(flow, mark, True)
        assert flow.update_reading(0) and not flow.reading
        setattr(flow, mark, False)
        assert flow.update_reading(0) and flow.reading


@given(st.lists(st.binary(min_size=1, max_size=9000), max_size=12), st.lists(st.booleans()))
def test_any_reads_any_phases_feed_every_byte_once_in_order(
    reads: list[bytes], bulks: list[bool]
) -> None:
    flow = Flow()
    fed = b""
    for i, data in enumerate(reads):
        flow.hold(data)
        bulk = bulks[i % len(bulks)] if bulks else False
        chunks = drain_turn(flow, bulk)
        assert bulk or sum(map(len, chunks)) <= FEED_BUDGET
        assert bulk or all(len(c) <= FEED_SLICE for c in chunks)
        fed += b"".join(chunks)
    fed += flow.take_all()
    assert fed == b"".join(reads)
