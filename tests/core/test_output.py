"""The core's output: actions in order, and the protocol-log traces its mask asks for."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from smtpguard.core.actions import (
    TRACE_ALL,
    TRACE_CLIENT,
    Direction,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.output import Output

_CODE = re.compile(rb"[0-9]{3}")

_reply_lines = st.lists(
    st.one_of(
        st.builds(
            lambda code, sep, text: b"%d%s%s" % (code, sep, text),
            st.integers(0, 999),
            st.sampled_from([b" ", b"-", b"", b"x"]),
            st.binary(max_size=8),
        ),
        st.binary(max_size=8),
        st.sampled_from(["\u00b2\u00b2\u00b2 x".encode(), "\u0661\u0662\u0663 x".encode()]),
    ),
    max_size=5,
)


@given(_reply_lines, st.sampled_from([b"\r\n", b"\n"]))
@example([b"250-one", b"250 two"], b"\r\n")
@example([b"25", b"2x0 y", "\u00b2\u00b2\u00b2".encode()], b"\r\n")
def test_to_client_traces_each_line_with_its_ascii_code(lines: list[bytes], eol: bytes) -> None:
    raw = b"".join(line + eol for line in lines)
    out = Output(TRACE_ALL)
    out.to_client(raw)
    assert out.actions[0] == ToClient(raw)
    traces = out.actions[1:]
    assert len(traces) == len(raw.splitlines())
    for tr, line in zip(traces, raw.splitlines(), strict=True):
        assert isinstance(tr, Trace) and tr.direction is Direction.GW_TO_CLIENT
        assert tr.line == line.decode("utf-8", "surrogateescape")
        m = _CODE.match(line)
        assert tr.code == (int(m.group()) if m else None)


def test_a_side_not_traced_builds_no_trace() -> None:
    out = Output(0)
    out.to_client(b"250 ok\r\n")
    out.to_server(b"NOOP\r\n", "NOOP")
    assert out.actions == [ToClient(b"250 ok\r\n"), ToServer(b"NOOP\r\n")]
    ims = Output(TRACE_CLIENT)  # the IMS layout: the client's side only
    ims.to_server(b"NOOP\r\n", "NOOP")
    assert ims.actions == [ToServer(b"NOOP\r\n")]
