"""Shared rate limits in the core, with no I/O: a ``rate-limit`` finding is counted by
the driver (``RateCheck``), per client or per sender address, and what it concerns
waits for the answer (``RateAnswer``) with replies in order: a MAIL/RCPT is held
and the commands pipelined behind it wait; content findings hold the final dot.
Over the limit: refused; a store failure: allowed. Every conversation here is also
re-cut at every segmentation (tests/core/conftest.py)."""

from __future__ import annotations

import dataclasses

from smtpguard.core import replies
from smtpguard.core.actions import (
    Action,
    CloseServer,
    OpenServer,
    PolicyEvent,
    RateCheck,
    ServerOutcome,
)
from smtpguard.core.actions import ToClient as C
from smtpguard.core.actions import ToServer as S
from smtpguard.core.events import (
    ClientData,
    DedupeAnswer,
    RateAnswer,
    ServerConnected,
    ServerData,
    Shutdown,
    Start,
)
from smtpguard.core.policy import Check, Checks, Emulation, PatternCheck, Policy, Smuggling, Verdict
from smtpguard.core.ratelimit import client_key, sender_key
from smtpguard.core.session import Session
from tests.core.harness import Harness
from tests.core.playbook import Playbook

PEER = ("192.0.2.7", 40000)
HELO = b"HELO client.example.org\r\n"
MSG = b"Subject: hello\r\nTo: b@example.net\r\n\r\nbody\r\n.\r\n"


def policy(**checks: object) -> Policy:
    return Policy(
        hostname="gw.example.test",
        shared_rates=True,
        checks=dataclasses.replace(Checks(), **checks),  # type: ignore[arg-type]
    )


def relay_policy(rate: int) -> Policy:
    """RCPT to a domain other than example.net: ``rate`` per hour per client pass."""
    return policy(
        recipient_domains=PatternCheck(
            Verdict.RATE_LIMIT, ("example\\.net",), allow=True, rate=rate, period=3600.0
        )
    )


RELAY = relay_policy(2)


class RateHarness(Harness):
    """Answers each RateCheck from ``counts`` (a store shared by the sessions of one
    test), at once or on :meth:`answer`; ``failing``: as a store that is down."""

    def __init__(self, counts: dict[str, int], *, defer: bool = False, **kw: object) -> None:
        kw.setdefault("peer", PEER)
        super().__init__(**kw)  # type: ignore[arg-type]
        self.counts = counts
        self.defer = defer
        self.checks: list[RateCheck] = []
        self.failing = False

    def _do(self, actions: list[Action]) -> None:
        super()._do(actions)
        for a in actions:
            if isinstance(a, RateCheck):
                self.checks.append(a)
                if not self.defer:
                    self.answer()

    def answer(self, allowed: bool | None = None) -> RateHarness:
        a = self.checks[-1]
        if allowed is None and not self.failing:
            self.counts[a.key] = self.counts.get(a.key, 0) + 1
            allowed = self.counts[a.key] <= a.rate
        self._feed(RateAnswer(allowed))
        return self


def rcpt_session(counts: dict[str, int], rcpt: bytes, **kw: object) -> RateHarness:
    h = RateHarness(counts, policy=RELAY, **kw)
    h.start()
    h.client(HELO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<" + rcpt + b">\r\nQUIT\r\n")
    h.client_eof()
    return h


def test_keys_per_client_and_per_sender() -> None:
    assert client_key(("192.0.2.7", 25)) == "client:192.0.2.7"
    assert client_key(("::ffff:192.0.2.7", 25)) == "client:192.0.2.7"
    assert client_key(("2001:DB8::1", 25)) == "client:2001:db8::1"
    assert client_key(None) == "client:-"
    assert sender_key("a@EXAMPLE.org") == sender_key("a@example.org")
    assert sender_key("A@example.org") != sender_key("a@example.org")  # local part as sent
    assert "example" not in sender_key("a@example.org")  # hashed: no address stored


def test_a_rcpt_limit_counts_across_sessions_of_one_client() -> None:
    counts: dict[str, int] = {}
    got = [rcpt_session(counts, b"x@elsewhere.test") for _ in range(3)]
    assert [b"RCPT TO:<x@elsewhere.test>" in h.run.server.received for h in got] == [
        True,
        True,
        False,
    ]
    assert b"550 5.7.1 Relay access denied" in got[2].run.replies()
    assert got[2].run.replies()[-1] == b"221 2.0.0 Bye"
    assert [e.action for e in got[2].run.events if e.id == "SG-CHK-RECIPIENT-DOMAIN"] == ["reject"]
    assert [e.action for e in got[0].run.events if e.id == "SG-CHK-RECIPIENT-DOMAIN"] == ["log"]
    assert {c.key for h in got for c in h.checks} == {"recipient_domains:client:192.0.2.7"}
    other = rcpt_session(counts, b"x@elsewhere.test", peer=("192.0.2.8", 1))
    assert b"RCPT TO:<x@elsewhere.test>" in other.run.server.received  # another client
    fine = rcpt_session(counts, b"b@example.net")
    assert fine.checks == []  # no finding: no store round trip


def test_a_sender_check_counts_per_sender_address_not_per_client() -> None:
    p = policy(sender_pattern=PatternCheck(Verdict.RATE_LIMIT, ("limited@.*",), rate=1))
    counts: dict[str, int] = {}

    def send(sender: bytes, peer: tuple[str, int]) -> RateHarness:
        h = RateHarness(counts, policy=p, peer=peer)
        h.start()
        h.client(HELO + b"MAIL FROM:<" + sender + b">\r\nQUIT\r\n")
        h.client_eof()
        return h

    first = send(b"limited@example.org", ("192.0.2.1", 1))
    again = send(b"limited@EXAMPLE.org", ("192.0.2.2", 1))  # another client, same sender
    other = send(b"limited@example.com", ("192.0.2.2", 1))
    assert b"MAIL FROM" in first.run.server.received
    assert b"MAIL FROM" not in again.run.server.received
    assert b"550 5.7.1 Sender address rejected" in again.run.replies()
    assert b"MAIL FROM" in other.run.server.received
    (key,) = {c.key for c in first.checks + again.checks}
    assert key == "sender_pattern:" + sender_key("limited@example.org")


def test_the_held_rcpt_and_what_is_pipelined_behind_it_wait_in_order() -> None:
    h = RateHarness({}, defer=True, policy=RELAY)
    h.start()
    h.client(HELO)
    h.client(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n"
        b"RCPT TO:<b@example.net>\r\nNOOP\r\n"
    )
    server = h.run.server
    assert server.received.endswith(b"MAIL FROM:<a@example.org>\r\n")  # RCPTs wait
    assert h.run.replies()[-1] == b"250 2.1.0 Ok"  # the MAIL's reply is not held up
    assert len(h.checks) == 1
    h.answer()
    assert server.received.endswith(
        b"RCPT TO:<x@elsewhere.test>\r\nRCPT TO:<b@example.net>\r\nNOOP\r\n"
    )
    assert h.run.replies()[-3:] == [b"250 2.1.5 Ok", b"250 2.1.5 Ok", b"250 2.0.0 Ok"]


def test_a_refused_rcpt_is_answered_in_its_place() -> None:
    h = RateHarness({"recipient_domains:client:192.0.2.7": 5}, defer=True, policy=RELAY)
    h.start()
    h.client(HELO)
    h.client(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<b@example.net>\r\n"
    )
    h.answer()
    assert b"elsewhere" not in h.run.server.received
    assert h.run.replies()[-3:] == [
        b"250 2.1.0 Ok",
        b"550 5.7.1 Relay access denied",
        b"250 2.1.5 Ok",
    ]


def test_a_store_failure_lets_the_command_through_logged() -> None:
    h = RateHarness({}, policy=RELAY)
    h.failing = True
    h.start()
    h.client(HELO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nQUIT\r\n")
    h.client_eof()
    assert b"RCPT TO:<x@elsewhere.test>" in h.run.server.received
    (ev,) = [e for e in h.run.events if e.id == "SG-CHK-RECIPIENT-DOMAIN"]
    assert ev.action == "log" and "store unavailable" in ev.message


def test_the_held_command_exactly() -> None:
    session = Session(RELAY, peer=PEER)
    key = "recipient_domains:client:192.0.2.7"
    assert (
        Playbook(session)
        >> Start()
        << OpenServer()
        >> ServerConnected()
        >> ServerData(b"220 mx ESMTP\r\n")
        << ServerOutcome(True)
        << C(b"220 gw.example.test ESMTP\r\n")
        >> ClientData(b"HELO c\r\n")
        << S(b"HELO c\r\n")
        >> ServerData(b"250 mx\r\n")
        << C(b"250 mx\r\n")
        >> ClientData(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRSET\r\n")
        << S(b"MAIL FROM:<a@x.org>\r\n")
        << RateCheck("recipient_domains", key, 2, 3600.0)
        >> ServerData(b"250 ok\r\n")
        << C(b"250 ok\r\n")
        >> RateAnswer(False)
        << PolicyEvent("SG-CHK-RECIPIENT-DOMAIN", "relaying to y.org is not allowed", "reject")
        << C(b"550 5.7.1 Relay access denied\r\n")  # its turn: the MAIL was answered
        << S(b"RSET\r\n")
        >> ServerData(b"250 reset\r\n")
        << C(b"250 reset\r\n")
    )


def test_a_refusal_waits_behind_the_earlier_reply() -> None:
    key = "recipient_domains:client:192.0.2.7"
    assert (
        Playbook(Session(RELAY, peer=PEER))
        >> Start()
        << OpenServer()
        >> ServerConnected()
        >> ServerData(b"220 mx ESMTP\r\n")
        << ServerOutcome(True)
        << C(b"220 gw.example.test ESMTP\r\n")
        >> ClientData(b"HELO c\r\n")
        << S(b"HELO c\r\n")
        >> ServerData(b"250 mx\r\n")
        << C(b"250 mx\r\n")
        >> ClientData(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nNOOP\r\n")
        << S(b"MAIL FROM:<a@x.org>\r\n")
        << RateCheck("recipient_domains", key, 2, 3600.0)
        >> RateAnswer(False)  # before the server's answer to the MAIL
        << PolicyEvent("SG-CHK-RECIPIENT-DOMAIN", "relaying to y.org is not allowed", "reject")
        << S(b"NOOP\r\n")
        >> ServerData(b"250 ok\r\n250 noop\r\n")
        << C(b"250 ok\r\n550 5.7.1 Relay access denied\r\n250 noop\r\n")
    )


def test_without_shared_rates_it_counts_per_session_as_before() -> None:
    p = dataclasses.replace(RELAY, shared_rates=False)
    p = dataclasses.replace(
        p,
        checks=dataclasses.replace(
            p.checks, rcpt_count=Check(Verdict.RATE_LIMIT, 1, rate=1, period=3600)
        ),
    )
    h = RateHarness({}, policy=p)
    h.start()
    rcpts = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(4))
    h.client(HELO + b"MAIL FROM:<a@example.org>\r\n" + rcpts)
    assert h.checks == []  # nothing asked of a store
    assert h.run.replies()[-4:] == [
        b"250 2.1.5 Ok",
        b"250 2.1.5 Ok",  # the 2nd RCPT is over the limit: the one event that passes
        b"452 4.5.3 Too many recipients",
        b"452 4.5.3 Too many recipients",
    ]


CONTENT = policy(to_cc_count=Check(Verdict.RATE_LIMIT, 0, rate=1, period=3600))
TX = HELO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


def test_a_content_finding_holds_the_dot_then_the_limit_refuses_the_message() -> None:
    counts: dict[str, int] = {}
    first = RateHarness(counts, defer=True, policy=CONTENT)
    first.start()
    first.client(TX + MSG + b"NOOP\r\n")
    server = first.run.server
    assert server.received.endswith(b"body\r\n") and server.messages == []  # dot held
    assert b"NOOP" not in server.received
    (check,) = first.checks
    assert (check.check, check.key, check.rate) == (
        "to_cc_count",
        "to_cc_count:client:192.0.2.7",
        1,
    )
    first.answer()
    assert server.messages == [MSG[: -len(b".\r\n")]]
    assert first.run.replies()[-2:] == [b"250 2.0.0 Ok: queued as Q1", b"250 2.0.0 Ok"]

    second = RateHarness(counts, policy=CONTENT)
    second.start()
    second.client(TX + MSG + b"QUIT\r\n")
    second.client_eof()
    leg = second.run.servers[0]
    assert leg.messages == [] and leg.aborted  # never the terminator
    assert all(s.messages == [] for s in second.run.servers)
    assert second.run.replies()[-2:] == [
        b"554 5.6.0 Message refused: too many To/Cc addresses",
        b"221 2.0.0 Bye",
    ]
    assert second.session.messages_refused == 1
    assert ("SG-CHK-TO-CC-COUNT", "reject") in [(e.id, e.action) for e in second.run.events]


def test_a_content_finding_and_dedupe_both_hold_the_dot() -> None:
    p = dataclasses.replace(CONTENT, dedupe=True)
    h = RateHarness({}, policy=p)
    lookups: list[Action] = []
    inner = h._do

    def do(actions: list[Action]) -> None:
        lookups.extend(a for a in actions if type(a).__name__ == "DedupeLookup")
        inner(actions)

    h._do = do  # type: ignore[method-assign]
    h.start()
    h.client(TX + MSG)
    assert len(h.checks) == 1 and len(lookups) == 1  # first the count, then the lookup
    assert h.run.server.messages == []  # the dot waits for the lookup's answer too
    h.feed(DedupeAnswer(None))
    assert h.run.server.messages == [MSG[: -len(b".\r\n")]]


def test_the_server_lost_while_a_command_is_held_is_never_a_250() -> None:
    h = RateHarness({}, defer=True, policy=RELAY)
    h.start()
    h.client(HELO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n")
    h.server_drops()
    h.answer()
    replies = h.run.replies()
    assert replies[-1].startswith(b"4")
    assert not replies[-1].startswith(b"250")


def test_invalid_recipients_over_the_limit_blocks_the_next_rcpts() -> None:
    p = policy(invalid_recipients=Check(Verdict.RATE_LIMIT, 0, rate=1, period=3600))
    counts = {"invalid_recipients:client:192.0.2.7": 1}  # the one event already passed
    h = RateHarness(counts, defer=True, policy=p)
    h.start()
    h.client(HELO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<unknown@example.net>\r\n")
    assert len(h.checks) == 1  # on the server's 550
    h.client(b"RCPT TO:<b@example.net>\r\n")
    assert b"RCPT TO:<b@example.net>" not in h.run.server.received  # waits for the count
    h.answer()
    assert b"RCPT TO:<b@example.net>" not in h.run.server.received
    assert h.run.replies()[-2:] == [b"550 5.1.1 User unknown", replies.TOO_MANY_INVALID.rstrip()]
    assert ("SG-CHK-INVALID-RECIPIENTS", "reject") in [(e.id, e.action) for e in h.run.events]


def test_normalize_mode_holds_the_dot_too() -> None:
    p = dataclasses.replace(CONTENT, smuggling=Smuggling.NORMALIZE)
    counts = {"to_cc_count:client:192.0.2.7": 1}
    h = RateHarness(counts, defer=True, policy=p)
    h.start()
    h.client(TX + MSG.replace(b"body\r\n", b"body\nbare\r\n"))
    assert h.run.server.messages == [] and len(h.checks) == 1
    h.answer()  # over the limit
    assert h.run.replies()[-1] == b"554 5.6.0 Message refused: too many To/Cc addresses"
    assert all(s.messages == [] for s in h.run.servers)


def test_pix_lock_step_forwards_the_held_command_then_waits() -> None:
    p = dataclasses.replace(RELAY, emulation=Emulation(pix=True))
    h = RateHarness({}, defer=True, policy=p)
    h.start()
    h.client(HELO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nQUIT\r\n")
    assert b"RCPT" not in h.run.server.received
    h.answer()
    assert h.run.server.received.endswith(b"RCPT TO:<x@elsewhere.test>\r\nQUIT\r\n")
    assert h.run.replies()[-2:] == [b"250 2.1.5 Ok", b"221 2.0.0 Bye"]


def test_the_client_closing_while_a_command_is_held_still_gets_its_reply() -> None:
    h = RateHarness({}, defer=True, policy=RELAY)
    h.start()
    h.client(HELO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n")
    h.client_eof()
    assert not h.run.client_closed  # the held RCPT is owed a reply
    h.answer()
    assert h.run.replies()[-1] == b"250 2.1.5 Ok"
    assert h.run.client_closed


def test_the_server_lost_while_the_dot_is_held_is_never_a_250() -> None:
    h = RateHarness({}, defer=True, policy=CONTENT)
    h.start()
    h.client(TX + MSG)
    h.server_drops()
    h.answer()
    replies = h.run.replies()
    assert replies[-1].startswith(b"4")
    assert not any(r.startswith(b"250 2.0.0") for r in replies)


def test_a_drain_waits_for_the_held_command() -> None:
    h = RateHarness({}, defer=True, policy=RELAY)
    h.start()
    h.client(HELO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n")
    h.feed(Shutdown())
    assert not h.run.client_closed
    h.answer()
    assert b"RCPT TO:<x@elsewhere.test>" in h.run.server.received
    assert h.run.replies()[-1] == b"250 2.1.5 Ok"  # the transaction goes on


def test_the_held_dot_exactly() -> None:
    key = "to_cc_count:client:192.0.2.7"
    msg = b"To: a@x, b@x\r\n\r\nhi\r\n.\r\n"
    assert (
        Playbook(Session(CONTENT, peer=PEER))
        >> Start()
        << OpenServer()
        >> ServerConnected()
        >> ServerData(b"220 mx ESMTP\r\n")
        << ServerOutcome(True)
        << C(b"220 gw.example.test ESMTP\r\n")
        >> ClientData(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        << S(b"HELO c\r\n")
        >> ServerData(b"250 mx\r\n")
        << C(b"250 mx\r\n")
        << S(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        >> ServerData(b"250 ok\r\n250 ok\r\n354 go\r\n")
        << C(b"250 ok\r\n250 ok\r\n354 go\r\n")
        >> ClientData(msg + b"NOOP\r\n")
        << S(msg[:-3])  # all but ".\r\n"
        << RateCheck("to_cc_count", key, 1, 3600.0)
        >> RateAnswer(None)  # the store failed: relayed, logged
        << PolicyEvent(
            "SG-CHK-TO-CC-COUNT",
            "2 addresses in To/Cc (limit 0) (rate not counted: store unavailable)",
            "log",
        )
        << S(b".\r\nNOOP\r\n")  # the dot, then what was pipelined behind it
        >> ServerData(b"250 queued\r\n250 noop\r\n")
        << C(b"250 queued\r\n250 noop\r\n")
        >> ClientData(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        << S(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        >> ServerData(b"250 ok\r\n250 ok\r\n354 go\r\n")
        << C(b"250 ok\r\n250 ok\r\n354 go\r\n")
        >> ClientData(msg)
        << S(msg[:-3])
        << RateCheck("to_cc_count", key, 1, 3600.0)
        >> RateAnswer(False)  # over the limit: refused, never the terminator
        << PolicyEvent(
            "SG-CHK-TO-CC-COUNT", "2 addresses in To/Cc (limit 0): message refused", "reject"
        )
        << C(b"554 5.6.0 Message refused: too many To/Cc addresses\r\n")
        << CloseServer(abort=True)
        << OpenServer()
    )
