"""The upstream pool alone: which server a connection goes to, and each server's
health, with the time passed in."""

from __future__ import annotations

import pytest

from smtpguard.core.policy import Balance
from smtpguard.gateway.upstreams import Health, UpstreamPool, show

A = ("192.0.2.1", 25)
B = ("192.0.2.2", 25)
C = ("2001:db8::3", 2525)


def test_failover_picks_the_first_server_that_is_up() -> None:
    pool = UpstreamPool([A, B], Balance.FAILOVER, fail_limit=2, backoff=30)
    assert [pool.pick(0).address for _ in range(3)] == [A, A, A]  # type: ignore[union-attr]
    assert pool.pick(0, tried=[A]).address == B  # type: ignore[union-attr]
    assert pool.pick(0, tried=[A, B]) is None


def test_round_robin_takes_the_servers_in_turn_and_skips_a_down_one() -> None:
    pool = UpstreamPool([A, B, C], Balance.ROUND_ROBIN, fail_limit=1, backoff=30)
    picks = [pool.pick(0).address for _ in range(6)]  # type: ignore[union-attr]
    assert picks == [A, B, C, A, B, C]
    pool.failed(B, 1.0, "refused")
    picks = [pool.pick(2).address for _ in range(4)]  # type: ignore[union-attr]
    assert picks == [A, C, A, C]


def test_consecutive_failures_mark_down_for_the_backoff_and_a_success_resets() -> None:
    pool = UpstreamPool([A, B], fail_limit=3, backoff=30)
    assert pool.failed(A, 0, "refused") is None
    assert pool.failed(A, 0, "refused") is None
    assert pool.succeeded(A, 0, 0.01) is None  # the count starts again
    assert pool.failed(A, 1, "refused") is None
    assert pool.failed(A, 1, "refused") is None
    change = pool.failed(A, 1, "greeting 421")
    assert change is not None and change.health is Health.DOWN
    assert "3 failures in a row, last: greeting 421" in change.why
    assert pool.pick(2).address == B  # type: ignore[union-attr]
    assert pool.pick(30.9).address == B  # type: ignore[union-attr]


def test_after_the_backoff_a_down_server_is_tried_again_only_after_those_up() -> None:
    pool = UpstreamPool([A, B], fail_limit=1, backoff=10)
    pool.failed(A, 0, "refused")
    assert pool.pick(11).address == B  # type: ignore[union-attr]  # B is up: first
    assert pool.pick(11, tried=[B]).address == A  # type: ignore[union-attr]
    # A failed retry starts a new back-off, without a second DOWN event.
    assert pool.failed(A, 11, "refused") is None
    assert pool.pick(12, tried=[B]) is None
    change = pool.succeeded(A, 22, 0.002)
    assert change is not None and change.health is Health.UP
    assert pool.pick(22).address == A  # type: ignore[union-attr]


def test_every_server_down_means_no_pick() -> None:
    pool = UpstreamPool([A, B], fail_limit=1, backoff=5)
    pool.failed(A, 0, "refused")
    pool.failed(B, 0, "refused")
    assert pool.pick(1) is None
    assert pool.pick(5).address == A  # type: ignore[union-attr]


def test_counters_and_latency() -> None:
    pool = UpstreamPool([A])
    pool.succeeded(A, 0, 0.004)
    pool.succeeded(A, 0, 0.003, session=False)  # a health check
    pool.failed(A, 0, "refused")
    (server,) = pool.servers
    assert (server.sessions, server.failures_total, server.last_latency) == (1, 1, 0.003)
    assert server.last_error == "refused"


def test_replace_keeps_the_health_of_kept_servers() -> None:
    pool = UpstreamPool([A, B], fail_limit=1, backoff=30)
    pool.failed(B, 0, "refused")
    pool.replace([B, C], Balance.ROUND_ROBIN)
    assert [s.address for s in pool.servers] == [B, C]
    assert pool.servers[0].health is Health.DOWN
    assert pool.balance is Balance.ROUND_ROBIN
    assert pool.pick(1).address == C  # type: ignore[union-attr]
    assert pool.failed(A, 1, "refused") is None  # gone: nothing recorded
    with pytest.raises(ValueError):
        pool.replace([])


def test_duplicates_are_one_server_and_names_show_ipv6_in_brackets() -> None:
    pool = UpstreamPool([A, A, C])
    assert [s.name for s in pool.servers] == ["192.0.2.1:25", "[2001:db8::3]:2525"]
    assert show(C) == "[2001:db8::3]:2525"


def test_with_active_checks_only_a_check_brings_a_down_server_back() -> None:
    pool = UpstreamPool([A, B], fail_limit=1, backoff=5, checked=True)
    pool.failed(A, 0, "no greeting")
    pool.failed(B, 0, "no greeting")
    assert pool.pick(100) is None  # no session waits on a server marked down
    pool.succeeded(B, 101, 0.002, session=False)
    assert pool.pick(101).address == B  # type: ignore[union-attr]
