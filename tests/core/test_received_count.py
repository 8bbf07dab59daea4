"""``[checks.received_count]``: a message with more Received: fields than the limit is
a mail loop (RFC 5321 §6.3) and is refused with 554 5.4.6 as it streams: the server
never sees its end of data. Re-cut at every segmentation by tests/core/conftest.py."""

from __future__ import annotations

import dataclasses

from smtpguard.core.message import MessageInspector
from smtpguard.core.policy import Check, Checks, Policy, Verdict
from tests.core.harness import Harness

HOPS = b"".join(
    b"Received: from hop%d.example.org by hop%d.example.net;\r\n"
    b"\tMon, 7 Dec 2026 10:00:00 +0000\r\n" % (i, i + 1)
    for i in range(100)
)


def message(hops: bytes) -> bytes:
    return hops + b"From: a@example.org\r\nSubject: loop\r\n\r\nbody\r\nReceived: x\r\n.\r\n"


def send(policy: Policy, msg: bytes) -> Harness:
    h = Harness(policy).start()
    for line in (b"HELO c\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n"):
        h.client(line)
    h.client(b"DATA\r\n")
    h.client(msg)
    h.client(b"QUIT\r\n")
    return h


def test_the_limit_itself_passes() -> None:
    h = send(Policy(hostname="gw"), message(HOPS))  # 100 fields; the one in the body is not
    assert h.run.event_ids() == []
    assert len(h.run.server.messages) == 1


def test_one_more_is_a_loop_refused_before_the_server_sees_the_end() -> None:
    h = send(Policy(hostname="gw"), message(HOPS + b"received :from loop\r\n"))
    assert h.run.event_ids() == ["SG-CHK-RECEIVED-COUNT"]
    replies = h.run.replies()
    assert replies[-2] == b"554 5.4.6 Routing loop detected: too many Received: fields"
    assert replies[-1] == b"221 2.0.0 Bye"
    assert h.run.servers[0].messages == [] and h.run.servers[0].aborted


def test_the_limit_and_the_action_come_from_the_check() -> None:
    checks = dataclasses.replace(Checks(), received_count=Check(Verdict.LOG, 3))
    h = send(Policy(hostname="gw", checks=checks), message(HOPS[:400]))
    assert h.run.event_ids() == ["SG-CHK-RECEIVED-COUNT"]
    assert len(h.run.server.messages) == 1  # logged only
    off = dataclasses.replace(Checks(), received_count=Check(Verdict.REJECT, None))
    assert send(Policy(hostname="gw", checks=off), message(HOPS * 3)).run.event_ids() == []


def test_fields_are_counted_in_any_chunking_and_only_in_the_header() -> None:
    checks = dataclasses.replace(Checks(), received_count=Check(Verdict.REJECT, 2))
    data = b"Received: a\r\nX-Received: b\r\nReceived: c\r\nSubject: s\r\n\r\nReceived: d\r\n"
    for size in (1, 3, len(data)):
        assert _findings(checks, data, size) == []  # two fields: the limit
        assert _findings(checks, b"RECEIVED :z\r\n" + data, size) == ["received_count"]


def _findings(checks: Checks, data: bytes, size: int) -> list[str]:
    inspector = MessageInspector(checks)
    found = []
    for i in range(0, len(data), size):
        found += inspector.feed(data[i : i + size])
    return [f.check for f in found]
