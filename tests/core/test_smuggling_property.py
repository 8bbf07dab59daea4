"""Properties of the DATA relay over random byte streams (docs/design.md#framing).

The message data is drawn from pieces biased towards CR, LF, ``.`` and NUL (the
material of every smuggling variant), the client's stream is cut at random points,
and each run checks, for ``reject`` and for ``normalize``:

* the bytes a server received after DATA hold no end of data, under a strict
  reading (``CRLF . CRLF``) or any lenient one (a lone dot between any two of CRLF,
  CR, LF, NULs ignored), before the end the gateway decided, and the strict and the
  lenient reading agree on where that is;
* every line a server could parse as a command after that end is a command line the
  client sent after its own end of data (found here on the raw client stream, not by
  the gateway), in order: nothing from inside the message runs as a command;
* every 2xx the client got is a line some server sent, and the client got one
  ``250 … queued`` per message a server stored: never a false 250, never a silent
  delivery.
"""

from __future__ import annotations

import dataclasses
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.core.policy import Mode, Policy, Smuggling
from tests.core.harness import Harness

PIECES = [b"\r", b"\n", b".", b"\x00", b"\r\n", b"x", b" ", b"MAIL FROM:<e@x.org>", b"QUIT"]
HEAD = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
TAIL = b"\r\n.\r\nRSET\r\nQUIT\r\n"

STRICT = re.compile(rb"(?:^|(?<=\r\n))\.\r\n")
LENIENT = re.compile(rb"(?:^|(?<=[\r\n]))\.(?:\r\n|\r|\n)")

bodies = st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join)


def policy(smuggling: Smuggling) -> Policy:
    return dataclasses.replace(Policy.for_mode(Mode.ESMTP, hostname="gw"), smuggling=smuggling)


def first_end(pattern: re.Pattern[bytes], data: bytes) -> int:
    m = pattern.search(data)
    return -1 if m is None else m.end()


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")[:-1]


def is_subsequence(small: list[bytes], big: list[bytes]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def check(script: bytes, cuts: list[int], smuggling: Smuggling) -> None:
    h = Harness(policy(smuggling), trace=False).start()
    h.client(script, cuts).client_eof()
    run = h.run
    data = script[len(HEAD) :]
    client_end = first_end(STRICT, data)  # the end of data as RFC 5321 places it
    assert client_end >= 0
    client_commands = lines(data[client_end:])
    for index, srv in enumerate(run.servers):
        received = bytes(srv.received)
        _, sep, stream = received.partition(b"DATA\r\n")
        if not sep:
            continue
        assert index == 0  # only the client's first transaction had a DATA (TAIL has none)
        strict = first_end(STRICT, stream)
        lenient = first_end(LENIENT, stream.replace(b"\x00", b""))
        assert strict == lenient, (stream, strict, lenient)
        if strict < 0:
            assert srv.aborted or not srv.closed  # never completed: the server discards it
            continue
        after = stream[strict:]
        assert is_subsequence(lines(after), client_commands), (after, client_commands)
    # EHLO filtering may drop lines and so turn a "250-" into the last "250 ": compare
    # code and text, not the separator.
    sent = {line[:3] + line[4:] for line in lines(bytes(run.server_sent))}
    got = lines(bytes(run.client_out))
    for line in got[1:]:  # the greeting is the banner policy's
        if line.startswith(b"2"):
            assert line[:3] + line[4:] in sent, line
    queued = sum(1 for line in got if line.startswith(b"250 2.0.0 Ok: queued"))
    assert queued == sum(len(s.messages) for s in run.servers)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=bodies,
    smuggling=st.sampled_from([Smuggling.REJECT, Smuggling.NORMALIZE]),
    data=st.data(),
)
def test_upstream_never_sees_an_end_of_data_the_gateway_did_not_decide(
    body: bytes, smuggling: Smuggling, data: st.DataObject
) -> None:
    script = HEAD + body + TAIL
    cuts = data.draw(st.lists(st.integers(1, len(script) - 1), max_size=12))
    check(script, cuts, smuggling)


@settings(max_examples=60, deadline=None)
@given(body=bodies, smuggling=st.sampled_from([Smuggling.REJECT, Smuggling.NORMALIZE]))
def test_same_property_one_byte_at_a_time(body: bytes, smuggling: Smuggling) -> None:
    script = HEAD + body + TAIL
    check(script, list(range(1, len(script))), smuggling)
