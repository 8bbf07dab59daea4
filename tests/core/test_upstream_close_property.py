"""Properties of a session whose server closes at any point between commands.

Random sessions (commands, messages, AUTH) are interrupted by the server closing its
connection, or saying ``421`` and closing, between any two of the client's commands,
as often as drawn. Each run checks:

* every 2xx the client got (after the gateway's own greeting) is a reply some server
  sent: never a false 2xx, on any connection the session opened;
* the client was told ``250 … queued`` exactly once per message a server stored;
* a message the gateway refused gets a fresh connection for the next one, unless
  the client authenticated (then ``421``: the fresh one would not know it);
* a close while nothing was owed, no transaction open and the client not
  authenticated costs the client nothing: the session goes on, every later command
  gets its reply (from a fresh connection). Otherwise the client is told ``421``
  and the session ends;
* while the session is open, every command got exactly one final reply, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.core.policy import Mode, Policy
from tests.core.harness import FakeServer, Harness

POLICY = Policy.for_mode(Mode.ESMTP, hostname="gw")
MESSAGE = b"DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n"
REFUSED = b"DATA\r\nSubject: s\r\n\r\nbare\nLF\r\n.\r\n"  # refused by the gateway
STEPS = [
    b"NOOP\r\n",
    b"RSET\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"RCPT TO:<b@example.net>\r\n",
    b"AUTH PLAIN AGFAYg==\r\n",
    b"EHLO c\r\n",
    MESSAGE,
    REFUSED,
    "close",
    "421",
]


@dataclass
class AuthServer(FakeServer):
    """The harness's server, with AUTH PLAIN accepted."""

    def answer(self, line: bytes) -> bytes:
        if line[:4].upper() == b"AUTH":
            return b"235 2.7.0 Authentication successful\r\n"
        return super().answer(line)


def finals(data: bytes) -> list[bytes]:
    """The final lines of every reply (``NNN `` or a bare code)."""
    return [ln for ln in data.split(b"\r\n")[:-1] if len(ln) < 4 or ln[3:4] == b" "]


def texts(data: bytes) -> set[tuple[bytes, bytes]]:
    """Every reply line as (code, text): an EHLO reply filtered by the gateway may
    end on a line the server sent with ``250-``."""
    return {(ln[:3], ln[4:]) for ln in data.split(b"\r\n")[:-1]}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(STEPS), max_size=14))
def test_a_server_closing_between_commands_never_costs_a_false_reply(steps: list) -> None:
    h = Harness(POLICY, server=AuthServer(), trace=False).start()
    run = h.run
    h.client(b"EHLO c\r\n")
    owed = 2  # the greeting and the EHLO reply
    in_tx = authed = False
    for step in steps:
        if run.client_closed:
            break
        if isinstance(step, str):  # the server ends its connection
            if not h.live:
                continue  # no connection open (parked): nothing to close
            idle = not in_tx and not authed
            if step == "421":
                h.server_says(b"421 4.4.2 mx Error: timeout exceeded\r\n")
            h.server_drops()
            if idle:
                assert not run.client_closed, run.replies()
            else:
                assert run.client_closed and run.replies()[-1].startswith(b"421 ")
            continue
        before = len(finals(bytes(run.client_out)))
        h.client(step)
        got = finals(bytes(run.client_out))[before:]
        owed += 2 if step in (MESSAGE, REFUSED) else 1
        if step == REFUSED and got and got[-1].startswith(b"550 "):
            # its connection aborted: a fresh one, unless the client authenticated
            assert run.client_closed is authed, run.replies()
        if run.client_closed:
            break
        assert len(finals(bytes(run.client_out))) == owed, run.replies()
        last = got[-1][:1] if got else b""
        if step.startswith(b"MAIL"):
            in_tx = in_tx or last == b"2"
        elif step in (MESSAGE, REFUSED) or step.startswith((b"RSET", b"EHLO")):
            in_tx = False
        elif step.startswith(b"AUTH"):
            authed = authed or last == b"2"
    client_out = bytes(run.client_out)
    sent = texts(bytes(run.server_sent))
    for line in client_out.split(b"\r\n")[1:-1]:  # after the gateway's own greeting
        if line[:1] == b"2":
            assert (line[:3], line[4:]) in sent, line
    queued = sum(1 for ln in finals(client_out) if b" queued as " in ln)
    assert queued == sum(len(srv.messages) for srv in run.servers)
