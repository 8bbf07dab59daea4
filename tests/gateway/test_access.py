"""Access control logic with a fake clock, and Gateway.admit / policy_for with fake
connections (no sockets)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.core.policy import Policy, Smuggling
from smtpguard.gateway.access import (
    DENIED,
    PRUNE_FLOOR,
    RATE_LIMITED,
    SESSION_CAP,
    AccessControl,
    AccessPolicy,
    parse_ip,
    peer_ip,
)
from smtpguard.gateway.server import Gateway, GatewayConfig


def nets(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


# -- networks ----------------------------------------------------------------------------


def test_no_lists_admits_everyone() -> None:
    assert AccessControl().admit("192.0.2.1", 0.0) is None


def test_denied_network_gets_554() -> None:
    ac = AccessControl(AccessPolicy(deny=nets("192.0.2.0/24")))
    r = ac.admit("192.0.2.7", 0.0)
    assert r is not None and r.event_id == DENIED
    assert r.reply.startswith(b"554 5.7.1 ") and r.reply.endswith(b"\r\n")
    assert b"192.0.2.7" in r.reply
    assert ac.admit("198.51.100.1", 0.0) is None


def test_allow_list_refuses_others() -> None:
    ac = AccessControl(AccessPolicy(allow=nets("10.0.0.0/8")))
    assert ac.admit("10.1.2.3", 0.0) is None
    assert ac.admit("192.0.2.1", 0.0) is not None


@pytest.mark.parametrize(
    ("allow", "deny", "ip", "ok"),
    [
        (("10.0.0.0/8",), ("10.1.0.0/16",), "10.1.2.3", False),  # deny more specific
        (("10.1.0.0/16",), ("10.0.0.0/8",), "10.1.2.3", True),  # allow more specific
        (("10.1.0.0/16",), ("10.0.0.0/8",), "10.2.0.1", False),
        (("10.0.0.0/8",), ("10.0.0.0/8",), "10.0.0.1", False),  # tie: deny
        (("2001:db8::/32",), (), "2001:db8::1", True),
        (("2001:db8::/32",), (), "192.0.2.1", False),  # other family: not in allow
        ((), ("192.0.2.0/24",), "::ffff:192.0.2.9", False),  # v4-mapped counts as v4
    ],
)
def test_most_specific_match_wins(
    allow: tuple[str, ...], deny: tuple[str, ...], ip: str, ok: bool
) -> None:
    assert AccessPolicy(allow=nets(*allow), deny=nets(*deny)).permits(parse_ip(ip)) is ok


def test_non_ip_peer_is_local_and_admitted() -> None:
    ac = AccessControl(AccessPolicy(allow=nets("10.0.0.0/8")))
    assert ac.admit("/run/smtpguard.sock", 0.0) is None


def test_peer_ip_strips_port() -> None:
    assert peer_ip("127.0.0.2:40000") == "127.0.0.2"
    assert peer_ip("::1:40000") == "::1"
    assert peer_ip("unix") == "unix"


# -- per-address session cap --------------------------------------------------------------


def test_session_cap_per_address_and_release() -> None:
    ac = AccessControl(AccessPolicy(max_sessions_per_ip=2))
    assert ac.admit("192.0.2.1", 0.0) is None
    assert ac.admit("192.0.2.1", 0.0) is None
    r = ac.admit("192.0.2.1", 0.0)
    assert r is not None and r.event_id == SESSION_CAP and r.reply.startswith(b"421 4.7.0")
    assert ac.admit("192.0.2.2", 0.0) is None  # another address is not affected
    ac.release("192.0.2.1")
    assert ac.admit("192.0.2.1", 0.0) is None
    for _ in range(3):
        ac.release("192.0.2.1")
    assert "192.0.2.1" not in ac.sessions  # never negative, never leaks


@given(st.lists(st.sampled_from(["open", "close"]), max_size=60))
def test_session_count_matches_opens_minus_closes(ops: list[str]) -> None:
    ac = AccessControl(AccessPolicy(max_sessions_per_ip=3))
    live = 0
    for op in ops:
        if op == "open":
            admitted = ac.admit("192.0.2.1", 0.0) is None
            assert admitted is (live < 3)
            live += admitted
        elif live:
            ac.release("192.0.2.1")
            live -= 1
        assert ac.sessions.get("192.0.2.1", 0) == live


# -- connection rate (fake clock) -----------------------------------------------------------


def test_rate_limit_burst_then_refill() -> None:
    ac = AccessControl(AccessPolicy(connection_rate=3, rate_period=60.0))
    t = 1000.0
    for _ in range(3):
        assert ac.admit("192.0.2.1", t) is None
    r = ac.admit("192.0.2.1", t)
    assert r is not None and r.event_id == RATE_LIMITED and r.reply.startswith(b"421 4.7.0")
    assert ac.admit("192.0.2.2", t) is None  # per address
    assert ac.admit("192.0.2.1", t + 10.0) is not None  # one token takes 20 s
    assert ac.admit("192.0.2.1", t + 20.0) is None
    assert ac.admit("192.0.2.1", t + 20.0) is not None
    assert ac.admit("192.0.2.1", t + 1000.0) is None  # refilled, capped at the burst
    assert ac.admit("192.0.2.1", t + 1000.0) is None
    assert ac.admit("192.0.2.1", t + 1000.0) is None
    assert ac.admit("192.0.2.1", t + 1000.0) is not None


@given(
    rate=st.integers(1, 10),
    period=st.floats(1.0, 100.0),
    gaps=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=80),
)
def test_rate_limit_never_exceeds_burst_plus_refill(
    rate: int, period: float, gaps: list[float]
) -> None:
    ac = AccessControl(AccessPolicy(connection_rate=rate, rate_period=period))
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        admitted += ac.admit("192.0.2.1", now) is None
    assert admitted <= rate + now * rate / period + 1e-9


def test_rate_buckets_are_pruned() -> None:
    ac = AccessControl(AccessPolicy(connection_rate=1, rate_period=1.0))
    for i in range(PRUNE_FLOOR + 10):
        ac.admit(str(ipaddress.ip_address(0x0A000000 + i)), float(i))
    # Clients idle for longer than a period have full buckets and are forgotten.
    assert len(ac.buckets) < PRUNE_FLOOR


def test_refused_by_rate_is_not_counted_as_session() -> None:
    ac = AccessControl(AccessPolicy(connection_rate=1, max_sessions_per_ip=5))
    assert ac.admit("192.0.2.1", 0.0) is None
    assert ac.admit("192.0.2.1", 0.0) is not None
    assert ac.sessions["192.0.2.1"] == 1


# -- Gateway.admit and policy_for with fake connections ----------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


class FakeConn:
    def __init__(self, peer: str, sid: str = "00000001") -> None:
        self.peer = peer
        self.sid = sid
        self.transport = FakeTransport()
        self.session = None


def _gateway(access: AccessPolicy, policy: Policy | None = None) -> Gateway:
    async def make() -> Gateway:
        return Gateway(GatewayConfig(max_sessions=10), policy or Policy(), access=access)

    return asyncio.run(make())


def test_gateway_admit_refuses_denied_network_with_event() -> None:
    gw = _gateway(AccessPolicy(deny=nets("127.0.0.2/32")))
    bad = FakeConn("127.0.0.2:5000")
    assert gw.admit(bad) is False  # type: ignore[arg-type]
    assert bad.transport.written.startswith(b"554 5.7.1") and bad.transport.closed
    assert gw.stats.policy_events == {DENIED: 1}
    assert gw.stats.sessions_refused == 1
    good = FakeConn("127.0.0.1:5000")
    assert gw.admit(good) is True  # type: ignore[arg-type]
    assert good.transport.written == b"" and not good.transport.closed


def test_gateway_release_frees_the_per_address_slot() -> None:
    gw = _gateway(AccessPolicy(max_sessions_per_ip=1))  # (no core session to count)
    first = FakeConn("127.0.0.1:1")
    assert gw.admit(first) is True  # type: ignore[arg-type]
    second = FakeConn("127.0.0.1:2")
    assert gw.admit(second) is False  # type: ignore[arg-type]
    assert second.transport.written.startswith(b"421 4.7.0")
    gw.release(first)  # type: ignore[arg-type]
    assert gw.admit(FakeConn("127.0.0.1:3")) is True  # type: ignore[arg-type]


def test_policy_for_normalize_networks_is_cached() -> None:
    base = Policy()
    gw = _gateway(AccessPolicy(normalize_networks=nets("192.0.2.0/24")), base)
    p1 = gw.policy_for("192.0.2.5")
    assert p1.smuggling is Smuggling.NORMALIZE
    assert p1 is gw.policy_for("192.0.2.6")  # one derived object, not one per session
    assert gw.policy_for("198.51.100.1") is base
    new = Policy(hostname="new.example")
    gw.set_policy(new)
    assert gw.policy_for("198.51.100.1") is new
    derived = gw.policy_for("192.0.2.5")
    assert derived.hostname == "new.example" and derived.smuggling is Smuggling.NORMALIZE
    assert p1.hostname == base.hostname  # the old object is untouched for old sessions


def test_policy_for_without_normalize_networks_is_the_policy() -> None:
    base = Policy()
    gw = _gateway(AccessPolicy(), base)
    assert gw.policy_for("192.0.2.5") is base
    assert gw.policy_for("not-an-ip") is base
