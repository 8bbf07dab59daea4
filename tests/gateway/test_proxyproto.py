"""PROXY protocol parser and builders: spec examples, byte-at-a-time, round trips."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from smtpguard.core.actions import PolicyEvent
from smtpguard.core.upstream import xclient_line, xtext_addr
from smtpguard.gateway.access import AccessPolicy
from smtpguard.proxyproto import (
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    build_v1,
    build_v2,
    parse,
)


def feed_bytewise(data: bytes) -> ProxyHeader:
    for n in range(1, len(data)):
        assert parse(data[:n]) is None, n
    got = parse(data)
    assert got is not None
    return got


def test_v1_tcp4_and_trailing_data() -> None:
    raw = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n"
    h = parse(raw)
    assert h == ProxyHeader(1, False, ("192.0.2.1", 56324), ("198.51.100.2", 25), 44)
    assert raw[h.length :] == b"EHLO x\r\n"
    assert feed_bytewise(raw[:44]) == h


def test_v1_tcp6_and_unknown() -> None:
    h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 25\r\n")
    assert h is not None and h.source == ("2001:db8::1", 4000)
    u = parse(b"PROXY UNKNOWN ffff:f...f:ffff ffff 25\r\n")
    assert u is not None and u.local and u.source is None


@pytest.mark.parametrize(
    "raw",
    [
        b"HELO x\r\n",
        b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 25\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 25\r\n",
        b"PROXY " + b"x" * 120,
        b"PROXY TCP5 a b c d\r\n",
    ],
)
def test_v1_malformed(raw: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(raw)


def test_v2_tcp4_with_tlv_and_local() -> None:
    block = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 5000, 25)
    tlv = b"\x04\x00\x02ab"  # a NOOP TLV, skipped
    raw = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(block + tlv)) + block + tlv
    h = feed_bytewise(raw)
    assert h == ProxyHeader(2, False, ("192.0.2.1", 5000), ("198.51.100.2", 25), len(raw))
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(local) == ProxyHeader(2, True, None, None, 16)


@pytest.mark.parametrize(
    "raw",
    [
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # command 2
        V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # short IPv4 block
        V2_SIGNATURE + b"\x21\x11\xff\xff",  # absurd length
        b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x00",  # bad signature
    ],
)
def test_v2_malformed(raw: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(raw)


addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
ports = st.integers(0, 65535)


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), ports, ports)
def test_round_trip_v1_v4(
    a: ipaddress.IPv4Address, b: ipaddress.IPv4Address, p: int, q: int
) -> None:
    h = parse(build_v1((str(a), p), (str(b), q)))
    assert h is not None and h.source == (str(a), p) and h.dest == (str(b), q)


@given(addresses, ports, ports)
def test_round_trip_v2(a: str, p: int, q: int) -> None:
    dest = "2001:db8::25" if ":" in a else "192.0.2.25"
    raw = build_v2((a, p), (dest, q))
    h = feed_bytewise(raw)
    assert h.source == (str(ipaddress.ip_address(a)), p) and h.length == len(raw)


# -- strict v1 grammar: what reaches XCLIENT and the logs --------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"PROXY TCP6 fe80::1%\teth0 2001:db8::2 4000 25\r\n",  # zone with a tab
        b"PROXY TCP6 fe80::1%\nRSET 2001:db8::2 4000 25\r\n",  # zone with a LF
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 4000 25\r\n",  # any zone at all
        b"PROXY TCP6 2001:db8::1 fe80::2%1 4000 25\r\n",  # in the destination too
        b"PROXY TCP6 fe80::1%\xff\xfe 2001:db8::2 4000 25\r\n",  # non-ASCII zone
        b"PROXY TCP6 [2001:db8::1] 2001:db8::2 4000 25\r\n",
        b"PROXY TCP4 192.0.2.1\x00 198.51.100.2 4000 25\r\n",
        b"PROXY TCP4 192.000.2.1 198.51.100.2 4000 25\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 \u0664\u0660 25\r\n".encode(),  # Arabic-Indic
        "PROXY TCP4 192.0.2.1 198.51.100.2 4000 \u00b2\r\n".encode(),  # superscript two
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +40 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 4_0 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 000000000040 25\r\n",
    ],
)
def test_v1_addresses_and_ports_strictly_to_the_grammar(raw: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(raw)


def test_v1_ipv6_textual_forms_accepted() -> None:
    h = parse(b"PROXY TCP6 ::FFFF:192.0.2.1 2001:DB8::2 0 65535\r\n")
    assert h is not None and h.source == (str(ipaddress.ip_address("::ffff:192.0.2.1")), 0)
    assert h.dest == ("2001:db8::2", 65535)


def test_builders_drop_a_zone() -> None:
    # A link-local client as the kernel reports it: the zone is this host's business.
    assert (
        build_v1(("fe80::1%eth0", 1), ("fe80::2%eth0", 25))
        == b"PROXY TCP6 fe80::1 fe80::2 1 25\r\n"
    )
    assert parse(build_v2(("fe80::1%eth0", 1), ("fe80::2", 25))) is not None


_odd = st.sampled_from(["", "0", "00", "\u0663", "\u00b2", "::", "1.2.3.4", "TCP4", "UNKNOWN"])
_hosts = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded.upper()),
    st.tuples(st.ip_addresses(v=6).map(str), st.text(max_size=8)).map("%".join),
    _odd,
    st.text(max_size=12),
)
_ports = st.one_of(st.integers(-5, 70000).map(str), _odd, st.text(max_size=6))
_valid_v1 = st.one_of(
    st.tuples(st.just("TCP4"), st.ip_addresses(v=4), st.ip_addresses(v=4), ports, ports),
    st.tuples(st.just("TCP6"), st.ip_addresses(v=6), st.ip_addresses(v=6), ports, ports),
).map(lambda f: "PROXY " + " ".join(map(str, f)) + "\r\n")


@st.composite
def _near_valid_v1(draw: st.DrawFn) -> str:
    """A valid line, left alone or with a few characters replaced or inserted."""
    line = draw(_valid_v1)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(6, len(line) - 2))
        new = draw(st.one_of(st.sampled_from("%\t\n .:0a\u0663\ufffd"), st.characters()))
        line = line[:at] + new + line[at + draw(st.integers(0, 1)) :]
    return line


_zoned_v1 = st.tuples(
    st.ip_addresses(v=6), st.text(st.characters(max_codepoint=0x7F), max_size=4), ports
).map(lambda f: f"PROXY TCP6 {f[0]}%{f[1]} ::1 {f[2]} 25\r\n")
_v1_lines = st.one_of(
    _near_valid_v1(),
    _zoned_v1,
    st.tuples(st.sampled_from(["TCP4", "TCP6"]), _hosts, _hosts, _ports, _ports).map(
        lambda f: "PROXY " + " ".join(f) + "\r\n"
    ),
    st.lists(st.one_of(_hosts, _ports), min_size=1, max_size=7).map(
        lambda f: "PROXY " + " ".join(f) + "\r\n"
    ),
    st.text(max_size=110).map(lambda t: "PROXY " + t),
)


@settings(max_examples=500)
@given(_v1_lines)
def test_any_v1_text_is_refused_or_gives_printable_addresses(text: str) -> None:
    """Whatever a balancer's line says: a ProxyError, or addresses that ipaddress
    prints back the same way and that an XCLIENT command carries as they are."""
    for raw in (text.encode("utf-8"), text.encode("latin-1", "replace")):
        try:
            h = parse(raw)
        except ProxyError:
            event("refused")
            continue
        if h is None or h.local:
            event("incomplete or local")
            continue
        event("accepted")
        assert h.source is not None and h.dest is not None
        for host, port in (h.source, h.dest):
            assert str(ipaddress.ip_address(host)) == host
            assert xtext_addr(host).removeprefix("IPV6:") == host  # nothing to encode
            assert all(0x21 <= ord(c) <= 0x7E for c in host) and 0 <= port <= 65535
        line = xclient_line(h.source)
        assert all(0x20 <= b <= 0x7E for b in line[:-2]) and line.endswith(b"\r\n")


def test_gateway_refuses_a_balancer_header_with_a_zone() -> None:
    """The connection is dropped before any session: nothing reaches the server."""
    from tests.gateway.test_connection import Harness, run

    async def go() -> None:
        h = Harness(access=AccessPolicy(proxy_from=(ipaddress.ip_network("192.0.2.0/24"),)))
        events: list[PolicyEvent] = []
        h.gw.policy_event = lambda sid, peer, ev: events.append(ev)  # type: ignore[method-assign]
        c, ct = h.client()
        c.data_received(b"PROXY TCP6 fe80::1%\nRSET 2001:db8::2 4000 25\r\nEHLO x\r\n")
        assert ct.aborted and not ct.written and not h.upstreams and c.session is None
        assert [e.id for e in events] == ["SG-PROXY-INVALID"]
        assert "\n" not in events[0].message  # the bytes are shown escaped

    run(go)
