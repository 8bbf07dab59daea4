"""PROXY protocol parser and builders against the specification
(haproxy doc/proxy-protocol.txt): its examples, every prefix of every header (one
byte at a time), trailing data, round trips, malformed and random input.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.proxyproto import (
    V1_MAX,
    V2_MAX_BLOCK,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    build_v1,
    build_v1_unknown,
    build_v2,
    build_v2_local,
    parse,
)

FFFF6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def v2(ver_cmd: int, fam: int, block: bytes) -> bytes:
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", len(block)) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


INET_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 56324, 25)
INET6_BLOCK = (
    ipaddress.IPv6Address("2001:db8::1").packed
    + ipaddress.IPv6Address("2001:db8::2").packed
    + struct.pack("!HH", 4000, 25)
)

# (raw header, what it must parse to); length is filled in from the raw header.
VALID: list[tuple[bytes, tuple[int, bool, tuple[str, int] | None, tuple[str, int] | None]]] = [
    # v1, the specification's own examples (section 2.1)
    (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        (1, False, ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    ),
    (
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        (1, False, ("255.255.255.255", 65535), ("255.255.255.255", 65535)),
    ),
    (
        f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
        (1, False, (FFFF6, 65535), (FFFF6, 65535)),
    ),
    (b"PROXY UNKNOWN\r\n", (1, True, None, None)),
    (f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(), (1, True, None, None)),
    # v2 (section 2.2)
    (v2(0x21, 0x11, INET_BLOCK), (2, False, ("192.0.2.1", 56324), ("198.51.100.2", 25))),
    (v2(0x21, 0x21, INET6_BLOCK), (2, False, ("2001:db8::1", 4000), ("2001:db8::2", 25))),
    (v2(0x20, 0x00, b""), (2, True, None, None)),  # LOCAL: health check
    (v2(0x20, 0x11, INET_BLOCK), (2, True, None, None)),  # LOCAL: addresses ignored
    (v2(0x21, 0x00, b""), (2, True, None, None)),  # PROXY, AF_UNSPEC
    (
        v2(0x21, 0x31, b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")),
        (2, True, None, None),
    ),
    (  # TLVs after the addresses: ALPN, AUTHORITY, CRC32C, NOOP, SSL with a sub-TLV
        v2(
            0x21,
            0x11,
            INET_BLOCK
            + tlv(0x01, b"smtp")
            + tlv(0x02, b"mx.example.org")
            + tlv(0x03, b"\0\0\0\0")
            + tlv(0x04, b"")
            + tlv(0x20, b"\x01\0\0\0\0" + tlv(0x21, b"TLSv1.3")),
        ),
        (2, False, ("192.0.2.1", 56324), ("198.51.100.2", 25)),
    ),
]


@pytest.mark.parametrize(("raw", "want"), VALID)
def test_valid_headers_whole_bytewise_and_with_trailing_data(
    raw: bytes, want: tuple[int, bool, tuple[str, int] | None, tuple[str, int] | None]
) -> None:
    expected = ProxyHeader(*want, length=len(raw))
    for n in range(len(raw)):  # every proper prefix: need more data, never an error
        assert parse(raw[:n]) is None, n
    assert parse(raw) == expected
    assert parse(bytearray(raw + b"EHLO client.example.org\r\n")) == expected
    assert parse(memoryview(raw + b"\r\n\r\n\x00")) == expected


def test_v1_longest_header_is_107_octets() -> None:
    longest = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX
    assert parse(longest) is not None
    with pytest.raises(ProxyError, match="107"):
        parse(b"PROXY UNKNOWN " + b"x" * 93)  # 107 octets and still no CRLF


MALFORMED_V1 = [
    b"HELO client.example.org\r\n",  # not a PROXY header at all
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # keyword is upper case
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a field missing
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # a field too many
    b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",  # short address
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero in an address
    b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",  # v6 address in TCP4
    b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n",  # v4 address in TCP6
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n",  # port out of range
    b"PROXY TCP4 1.2.3.4 5.6.7.8 025 25\r\n",  # leading zero in a port
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 25\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n",  # LF before the CRLF
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "PROXY TCP4 1.2.3.4 5.6.7.8 \u0663 2\r\n".encode(),  # a non-ASCII digit
]


@pytest.mark.parametrize("raw", MALFORMED_V1)
def test_malformed_v1(raw: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(raw)


MALFORMED_V2 = [
    (b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x00", "signature"),
    (v2(0x11, 0x11, INET_BLOCK), "version"),
    (v2(0x31, 0x11, INET_BLOCK), "version"),
    (v2(0x22, 0x11, INET_BLOCK), "command"),
    (v2(0x21, 0x41, INET_BLOCK), "family"),
    (v2(0x21, 0x13, INET_BLOCK), "family"),
    (v2(0x21, 0x12, INET_BLOCK), "TCP"),  # UDP over IPv4
    (v2(0x21, 0x22, INET6_BLOCK), "TCP"),  # UDP over IPv6
    (v2(0x21, 0x11, INET_BLOCK[:11]), "need 12"),
    (v2(0x21, 0x21, INET_BLOCK), "need 36"),  # IPv6 family, IPv4-sized block
    (v2(0x21, 0x31, b"x" * 100), "AF_UNIX"),
    (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_BLOCK + 1), "limit"),
]


@pytest.mark.parametrize(("raw", "why"), MALFORMED_V2)
def test_malformed_v2_says_why(raw: bytes, why: str) -> None:
    with pytest.raises(ProxyError, match=why):
        parse(raw)


def test_oversized_v2_is_refused_before_its_block_arrives() -> None:
    # The limit is checked on the 16-octet header: nothing more is buffered.
    with pytest.raises(ProxyError):
        parse(V2_SIGNATURE + b"\x21\x11\xff\xff")


def test_builders_for_local_and_unknown() -> None:
    assert parse(build_v1_unknown()) == ProxyHeader(1, True, None, None, 15)
    assert parse(build_v2_local()) == ProxyHeader(2, True, None, None, 16)


def test_builders_refuse_bad_ports() -> None:
    for build in (build_v1, build_v2):
        with pytest.raises(ValueError):
            build(("192.0.2.1", 70000), ("192.0.2.2", 25))


# -- property tests -----------------------------------------------------------------

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
endpoints = st.tuples(st.one_of(v4, v6), ports)


def _norm(host: str) -> str:
    return str(ipaddress.ip_address(host))


def _expected(src: tuple[str, int], dst: tuple[str, int]) -> tuple[tuple[str, int], ...]:
    a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if a.version != b.version:  # the builders map the IPv4 one into IPv6
        a, b = (ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))
    return (str(a), src[1]), (str(b), dst[1])


@given(endpoints, endpoints, st.sampled_from([build_v1, build_v2]), st.binary(max_size=40))
def test_round_trip(
    src: tuple[str, int], dst: tuple[str, int], build: object, trailing: bytes
) -> None:
    raw = build(src, dst)  # type: ignore[operator]
    h = parse(raw + trailing)
    assert h is not None and not h.local
    assert (h.source, h.dest) == _expected(src, dst)
    assert h.length == len(raw) and h.version == (1 if build is build_v1 else 2)
    assert len(raw) <= (V1_MAX if build is build_v1 else 16 + 36)


@given(endpoints, endpoints, st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=30))))
def test_v2_tlvs_are_skipped(
    src: tuple[str, int], dst: tuple[str, int], tlvs: list[tuple[int, bytes]]
) -> None:
    plain = build_v2(src, dst)
    extra = b"".join(tlv(k, v) for k, v in tlvs)
    raw = plain[:14] + struct.pack("!H", len(plain) - 16 + len(extra)) + plain[16:] + extra
    whole = parse(raw)
    assert whole is not None and whole.length == len(raw)
    assert (whole.source, whole.dest) == _expected(src, dst)


@given(endpoints, endpoints, st.sampled_from([build_v1, build_v2]), st.data())
def test_any_prefix_needs_more_data(
    src: tuple[str, int], dst: tuple[str, int], build: object, data: st.DataObject
) -> None:
    raw = build(src, dst)  # type: ignore[operator]
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert parse(raw[:cut]) is None


@given(st.one_of(st.binary(max_size=300), st.binary(max_size=120).map(lambda b: b"PROXY " + b)))
def test_random_bytes_parse_or_raise_proxyerror_only(raw: bytes) -> None:
    try:
        h = parse(raw)
    except ProxyError:
        return
    assert h is None or 0 < h.length <= len(raw)


@given(st.binary(max_size=250))
def test_random_v2_bodies_parse_or_raise_proxyerror_only(body: bytes) -> None:
    try:
        h = parse(V2_SIGNATURE + body)
    except ProxyError:
        return
    assert h is None or h.length <= 16 + len(body) + 4
