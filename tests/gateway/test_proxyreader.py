"""The PROXY header reader alone: whole input, one byte at a time, trailing data."""

from __future__ import annotations

import pytest

from smtpguard import proxyproto
from smtpguard.gateway.proxyreader import ProxyError, ProxyReader

V1 = b"PROXY TCP4 198.51.100.7 192.0.2.1 5000 25\r\n"
V2 = proxyproto.build_v2(("2001:db8::7", 5000), ("2001:db8::1", 25))
SMTP = b"EHLO client.example\r\n"


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_whole_input(header: bytes) -> None:
    r = ProxyReader()
    got = r.feed(header)
    assert got is not None and got.length == len(header) and r.rest == b""
    assert got.source is not None and got.source[1] == 5000


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_one_byte_at_a_time(header: bytes) -> None:
    r = ProxyReader()
    data = header + SMTP
    for i in range(len(header) - 1):
        assert r.feed(data[i : i + 1]) is None
    got = r.feed(data[len(header) - 1 : len(header)])
    assert got is not None and got.length == len(header) and r.rest == b""


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
@pytest.mark.parametrize("cut", [0, 5, 20])
def test_trailing_data_is_the_clients(header: bytes, cut: int) -> None:
    r = ProxyReader()
    data = header + SMTP
    assert r.feed(data[:cut]) is None
    got = r.feed(data[cut:])
    assert got is not None and r.rest == SMTP


def test_local_and_unknown_headers() -> None:
    for header in (proxyproto.build_v2_local(), proxyproto.build_v1_unknown()):
        got = ProxyReader().feed(header)
        assert got is not None and got.local


@pytest.mark.parametrize(
    "data",
    [b"EHLO x\r\n", b"PROXY TCP4 " + b"1" * 200, b"PROXY TCP9 a b 1 2\r\n"],
    ids=["smtp-first", "v1-too-long", "v1-bad-family"],
)
def test_not_a_header_is_refused(data: bytes) -> None:
    r = ProxyReader()
    with pytest.raises(ProxyError):
        for i in range(len(data)):  # one byte at a time: refused as soon as it can tell
            r.feed(data[i : i + 1])
