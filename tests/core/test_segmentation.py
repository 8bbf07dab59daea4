"""Every playbook again, with the client and server streams cut at random points.

The output streams must be byte-identical to the unsegmented run: the inspector
frames on a receive buffer, never on packets.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.core.policy import Mode, Policy
from tests.core.harness import FakeServer, Run, converse

HELO = b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
SCRIPTS = [
    HELO + b"Subject: x\r\n\r\nbody\r\n..stuffed\r\n.\r\nQUIT\r\n",
    HELO + b".\r\nQUIT\r\n",  # empty message: the 354 counts as a line start
    HELO + b"a\r\n.\r\n" + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nb\r\n.\r\nQUIT\r\n",
    b"EHLO c\r\nHELO c\r\nVRFY x\r\nNOOP\r\nQUIT\r\n",
    HELO
    + b"bad\nline\r\nMAIL FROM:<e@x>\r\n.\r\n"
    + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nok\r\n.\r\n",
    HELO + b"x\r\n\n.\nRCPT TO:<evil@y>\r\n.\r\nQUIT\r\n",
    HELO + b"x\r\n\r.\r\r\n.\r\nQUIT\r\n",
    HELO + b"nul\x00\r\n.\r\nNOOP\r\n",
    b"HELO c\r\nBDAT 12 LAST\r\nQUIT\r\nRSET\r\nNOOP\r\nQUIT\r\n",
    b"HELO c\r\nNO\rOP\r\nNOOP\n" + b"NOOP " + b"y" * 600 + b"\r\nQUIT\r\n",
    b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<unknown@y>\r\nDATA\r\nNOOP\r\nQUIT\r\n",
]


def _outcome(run: Run) -> tuple[object, ...]:
    return (
        bytes(run.client_out),
        [bytes(s.received) for s in run.servers],
        [s.messages for s in run.servers],
        [s.aborted for s in run.servers],
        run.client_closed,
        run.event_ids(),
    )


@st.composite
def cut_points(draw: st.DrawFn, n: int) -> list[int]:
    return draw(st.lists(st.integers(min_value=1, max_value=max(1, n - 1)), max_size=40))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    idx=st.integers(min_value=0, max_value=len(SCRIPTS) - 1),
    server_bytewise=st.booleans(),
    esmtp=st.booleans(),
)
def test_any_segmentation_gives_identical_streams(
    data: st.DataObject, idx: int, server_bytewise: bool, esmtp: bool
) -> None:
    script = SCRIPTS[idx]
    cuts = data.draw(cut_points(len(script)))
    refuse = b"unknown" in script
    policy = Policy.for_mode(Mode.ESMTP if esmtp else Mode.MAILGUARD, hostname="gw")
    whole = converse(script, policy=policy, server=FakeServer(refuse_data=refuse))
    cut = converse(
        script,
        cuts,
        policy=policy,
        server=FakeServer(refuse_data=refuse),
        server_chunks=int(server_bytewise),
    )
    assert _outcome(cut) == _outcome(whole)


def test_one_byte_segments_for_every_script() -> None:
    for script in SCRIPTS:
        refuse = b"unknown" in script
        whole = converse(script, server=FakeServer(refuse_data=refuse))
        cut = converse(
            script, range(len(script)), server=FakeServer(refuse_data=refuse), server_chunks=1
        )
        assert _outcome(cut) == _outcome(whole), script


_piece = st.sampled_from(
    [
        b"text",
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"..",
        b"\x00",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r\n.\n",
        b"MAIL FROM:<x@y>",
        b"QUIT",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.lists(_piece, max_size=12).map(b"".join), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=30),
)
def test_never_a_false_250_and_nothing_smuggled(bodies: list[bytes], cuts: list[int]) -> None:
    """Random message bodies, randomly cut: every 250 for a message matches one
    message the server really accepted, and no server message has bad framing."""
    script = b"HELO c\r\n"
    for body in bodies:
        script += b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n" + body + b"\r\n.\r\n"
    run = converse(script, cuts)
    delivered = [m for s in run.servers for m in s.messages]
    assert bytes(run.client_out).count(b"queued as") == len(delivered)
    for msg in delivered:
        assert not re.search(rb"\r(?!\n)|(?<!\r)\n|\x00", msg)
        assert b"\r\n.\r\n" not in b"\r\n" + msg
