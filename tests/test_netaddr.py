"""The one HOST:PORT parser (smtpguard.netaddr), every form it accepts and refuses."""

from __future__ import annotations

import re

import pytest

from smtpguard.netaddr import split_hostport


@pytest.mark.parametrize(
    ("text", "kw", "expected"),
    [
        ("127.0.0.1:2525", {}, ("127.0.0.1", 2525)),
        ("[::1]:25", {}, ("::1", 25)),
        (":2525", {"default_host": "127.0.0.1"}, ("127.0.0.1", 2525)),
        ("mx.example.test:0", {}, ("mx.example.test", 0)),
        ("mx.example.test", {"default_port": 25}, ("mx.example.test", 25)),
        ("[2001:db8::25]", {"default_port": 25}, ("2001:db8::25", 25)),
        ("2001:db8::25", {"default_port": 25}, ("2001:db8::25", 25)),  # bare IPv6
        ("[2001:db8::25]:2525", {"default_port": 25}, ("2001:db8::25", 2525)),
    ],
)
def test_accepted(text: str, kw: dict[str, object], expected: tuple[str, int]) -> None:
    assert split_hostport(text, **kw) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "kw", "why"),
    [
        ("127.0.0.1", {}, "expected HOST:PORT"),
        ("host:65536", {}, "port must be a number 0-65535"),
        ("host:x", {}, "port must be a number 0-65535"),
        (":25", {}, "no host"),
        ("[::1", {}, "expected [ADDRESS]:PORT"),
        ("[::1]x", {}, "expected [ADDRESS]:PORT"),
    ],
)
def test_refused(text: str, kw: dict[str, object], why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        split_hostport(text, **kw)  # type: ignore[arg-type]
