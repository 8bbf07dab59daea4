"""PROXY protocol parser and builders: spec examples, byte-at-a-time, round trips."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
