"""Command and reply parsing, and the core's no-I/O rule."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtpguard.core.grammar import (
    LineError,
    ReplyAssembler,
    make_reply,
    parse_command,
    parse_reply_line,
)


def test_parse_command() -> None:
    c = parse_command(b"mail FROM:<a@b> SIZE=10\r\n")
    assert c is not None and c.verb == "MAIL" and c.args == "FROM:<a@b> SIZE=10"
    assert c.raw == b"mail FROM:<a@b> SIZE=10\r\n" and c.text == "mail FROM:<a@b> SIZE=10"
    assert parse_command(b"QUIT\r\n") == parse_command(b"QUIT\r\n")
    assert parse_command(b"\r\n") is None
    assert parse_command(b" NOOP\r\n") is None
    assert parse_command(b"HELO \xff\r\n") is not None


def _reference_command(raw: bytes) -> tuple[str, str] | None:
    """RFC 5321 §4.1.1 read with bytes methods: the verb up to the first SP or tab,
    1 to 32 ASCII letters, digits and "-", a letter first."""
    line = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\r\n")
    seps = [i for i in (line.find(b" "), line.find(b"\t")) if i >= 0]
    sp = min(seps) if seps else -1
    verb = line if sp < 0 else line[:sp]
    if not 0 < len(verb) <= 32 or not verb[:1].isalpha():
        return None
    if not verb.replace(b"-", b"").isalnum():
        return None
    args = "" if sp < 0 else line[sp + 1 :].decode("utf-8", "surrogateescape").strip(" \t")
    return verb.decode("ascii").upper(), args


_command_lines = st.builds(
    lambda verb, sep, args, end: verb + sep + args + end,
    st.one_of(
        st.sampled_from([b"MAIL", b"rcpt", b"Data", b"X-EXCH50", b"XEXCH50", b"-X", b"9A"]),
        st.text("aZz09-_.\t\xe9", max_size=34).map(lambda s: s.encode("utf-8")),
        st.integers(31, 34).map(lambda n: b"A" * n),
    ),
    st.sampled_from([b"", b" ", b"\t", b"  ", b" \t", b"\t "]),
    st.binary(max_size=10),
    st.sampled_from([b"", b"\r\n", b"\n", b"\r", b"\r\r\n"]),
)


@given(st.one_of(st.binary(max_size=40), _command_lines))
@example(b"A" * 32 + b" x\r\n")
@example(b"A" * 33 + b"\r\n")
@example(b"mail\tFROM:<a@b>\r\n")
@example(b"\r\n")
def test_parse_command_is_the_grammar(raw: bytes) -> None:
    c = parse_command(raw)
    want = _reference_command(raw)
    assert (None if c is None else (c.verb, c.args)) == want
    assert c is None or c.raw == raw


def test_parse_reply_line() -> None:
    r = parse_reply_line(b"250-PIPELINING\r\n")
    assert r is not None and (r.code, r.last, r.text) == (250, False, "PIPELINING")
    r = parse_reply_line(b"220\r\n")
    assert r is not None and r.last
    assert parse_reply_line(b"2501\r\n") is None
    assert parse_reply_line(b"hello\r\n") is None
    assert parse_reply_line(b"600 x\r\n") is None


# RFC 5321 §4.2: Reply-code [ SP textstring ] ends a reply, Reply-code "-" textstring
# continues it; the first digit is 2 to 5 (the gateway reads no 1yz replies).
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)

_near_reply = st.builds(
    lambda head, sep, text, end: head + sep + text + end,
    st.one_of(
        st.integers(0, 999).map(lambda n: b"%d" % n),  # codes, and 1- and 2-digit ones
        st.lists(st.sampled_from(b"0123456789/:\xb2 -"), max_size=4).map(bytes),
    ),
    st.sampled_from([b"", b" ", b"-", b"\t", b"x", b"0"]),
    st.binary(max_size=12),
    st.sampled_from([b"", b"\r\n", b"\n", b"\r"]),
)


@given(st.one_of(st.binary(max_size=16), _near_reply))
@example(b"250\t x\r\n")
@example(b"199 x\r\n")
@example(b"600 x\r\n")
@example(b"25\r\n")
@example(b"2a0 x\r\n")
@example(b"250")
def test_parse_reply_line_is_the_grammar(raw: bytes) -> None:
    line = raw.rstrip(b"\r\n")
    m = _REPLY_LINE.fullmatch(line)
    got = parse_reply_line(raw)
    if m is None:
        assert got is None
    else:
        assert got is not None
        assert (got.code, got.last) == (int(m.group(1)), m.group(2) != b"-")
        assert got.text == line[4:].decode("utf-8", "surrogateescape")


def test_assembler_multiline() -> None:
    a = ReplyAssembler()
    assert a.add(b"250-one\r\n") is None and a.pending
    r = a.add(b"250 two\r\n")
    assert r is not None and r.lines == ("one", "two") and r.raw == b"250-one\r\n250 two\r\n"
    assert r.log_lines() == ["250-one", "250 two"] and r.positive and not a.pending
    with pytest.raises(LineError):
        a.add(b"250-x\r\n") or a.add(b"251 y\r\n")
    with pytest.raises(LineError):
        ReplyAssembler().add(b"garbage\r\n")


def test_make_reply_and_enhanced() -> None:
    r = make_reply(550, "5.1.1 first", "second")
    assert r.raw == b"550-5.1.1 first\r\n550 second\r\n"
    assert r.enhanced() == (5, 1, 1)
    assert make_reply(250, "ok").enhanced() is None


def test_core_does_no_io() -> None:
    """The core never imports asyncio, sockets, ssl, time or the OS layer."""
    forbidden = {"asyncio", "socket", "ssl", "time", "os", "select", "selectors", "threading"}
    core = pathlib.Path(__file__).parents[2] / "src" / "smtpguard" / "core"
    for path in core.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path.name} imports {n}"


def test_every_policy_event_id_is_documented() -> None:
    import re

    root = pathlib.Path(__file__).parents[2]
    ids = set()
    for path in (root / "src" / "smtpguard").rglob("*.py"):
        ids |= set(re.findall(r'"(SG-[A-Z0-9-]*[A-Z0-9])"', path.read_text()))
    documented = set(re.findall(r"`(SG-[A-Z0-9-]+)`", (root / "docs" / "events.md").read_text()))
    assert ids and ids <= documented, ids - documented
