"""Duplicate suppression in the core, with no I/O: the dot is held for one lookup,
a hit is answered 250 and never reaches the server, a miss or a store failure is
relayed, and only a server 250 records a key. Same outcome for every segmentation."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.core.actions import Action
from smtpguard.core.dedupe import DedupeLookup, DedupeRecord, Tracker, queue_id, transaction_key
from smtpguard.core.events import DedupeAnswer
from smtpguard.core.policy import DedupeReply, Policy, Smuggling
from tests.core.harness import FakeServer, Harness

MSG = b"Subject: hello\r\n\r\nbody line\r\n..stuffed\r\n.\r\n"
TX = b"HELO client.example.org\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
POLICY = Policy(hostname="gw.example.test", dedupe=True)


class DedupeHarness(Harness):
    """Answers each lookup from ``store`` (at once, or on :meth:`answer`)."""

    def __init__(self, store: dict[str, str], *, defer: bool = False, **kw: object) -> None:
        kw.setdefault("policy", POLICY)
        super().__init__(**kw)  # type: ignore[arg-type]
        self.store = store
        self.defer = defer
        self.lookups: list[str] = []
        self.records: list[DedupeRecord] = []
        self.failing = False

    def _do(self, actions: list[Action]) -> None:
        super()._do(actions)
        for a in actions:
            if isinstance(a, DedupeRecord):
                self.records.append(a)
                self.store.setdefault(a.key, a.queue_id)
            elif isinstance(a, DedupeLookup):
                self.lookups.append(a.key)
                if not self.defer:
                    self.answer()

    def answer(self) -> DedupeHarness:
        found = None if self.failing else self.store.get(self.lookups[-1])
        self._feed(DedupeAnswer(found))
        return self


def session(
    store: dict[str, str], script: bytes, cuts: tuple[int, ...] = (), **kw: object
) -> DedupeHarness:
    h = DedupeHarness(store, **kw)
    h.start()
    h.client(script, cuts)
    h.client_eof()
    return h


def test_a_resent_copy_is_answered_and_never_reaches_the_server() -> None:
    store: dict[str, str] = {}
    first = session(store, TX + MSG + b"QUIT\r\n")
    assert first.run.server.messages == [MSG[: -len(b".\r\n")]]
    assert b"250 2.0.0 Ok: queued as Q1" in first.run.replies()
    assert [r.queue_id for r in first.records] == ["Q1"]

    again = session(store, TX + MSG + b"QUIT\r\n")
    replies = again.run.replies()
    assert replies[-2:] == [b"250 2.0.0 Already accepted as Q1", b"221 2.0.0 Bye"]
    copy_leg = again.run.servers[0]
    assert copy_leg.messages == [] and copy_leg.aborted  # no terminator, aborted
    assert copy_leg.received.endswith(b"..stuffed\r\n")
    assert all(s.messages == [] for s in again.run.servers)
    assert len(again.run.servers) == 2  # reconnected (HELO replayed) for what follows
    assert again.run.servers[1].received == b"HELO client.example.org\r\nQUIT\r\n"
    assert "SG-DEDUPE-SUPPRESSED" in again.run.event_ids()
    assert again.records == []


def test_other_content_or_envelope_is_relayed_recipient_order_is_not() -> None:
    store: dict[str, str] = {}
    session(store, TX + MSG)
    other_body = session(store, TX + MSG.replace(b"hello", b"hullo"))
    assert len(other_body.run.server.messages) == 1
    other_rcpt = session(store, TX.replace(b"b@example.net", b"c@example.net") + MSG)
    assert len(other_rcpt.run.server.messages) == 1
    two = b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n"
    swapped = b"RCPT TO:<c@example.net>\r\nRCPT TO:<b@example.net>\r\n"
    session(store, TX.replace(b"RCPT TO:<b@example.net>\r\n", two) + MSG)
    suppressed = session(store, TX.replace(b"RCPT TO:<b@example.net>\r\n", swapped) + MSG)
    assert all(s.messages == [] for s in suppressed.run.servers)
    domain_case = session(store, TX.replace(b"example.net", b"EXAMPLE.NET") + MSG)
    assert all(s.messages == [] for s in domain_case.run.servers)


def test_a_refused_recipient_is_not_part_of_the_key() -> None:
    store: dict[str, str] = {}
    session(store, TX + MSG)
    with_unknown = TX.replace(
        b"DATA\r\n", b"RCPT TO:<unknown@example.net>\r\nDATA\r\n"
    )  # the server says 550 to it: the transaction is the same
    again = session(store, with_unknown + MSG)
    assert all(s.messages == [] for s in again.run.servers)


class RefusingServer(FakeServer):
    def feed(self, data: bytes) -> bytes:
        out = super().feed(data)
        return out.replace(b"250 2.0.0 Ok: queued as", b"554 5.7.1 Refused, not queued:")


class TempFailServer(FakeServer):
    def feed(self, data: bytes) -> bytes:
        out = super().feed(data)
        return out.replace(b"250 2.0.0 Ok: queued as", b"251 2.0.0 Ok (not 250) as")


class NoIdServer(FakeServer):
    def feed(self, data: bytes) -> bytes:
        return super().feed(data).replace(b"Ok: queued as Q1", b"Ok")


def test_a_reply_without_queue_id_is_recorded_under_the_key() -> None:
    store: dict[str, str] = {}
    first = session(store, TX + MSG, server=NoIdServer())
    (record,) = first.records
    assert record.queue_id == record.key[:16]
    again = session(store, TX + MSG)
    assert f"250 2.0.0 Already accepted as {record.key[:16]}".encode() in again.run.replies()


def test_only_a_server_250_records_a_key() -> None:
    store: dict[str, str] = {}
    refused = session(store, TX + MSG, server=RefusingServer())
    assert refused.records == [] and store == {}
    other_2xx = session(store, TX + MSG, server=TempFailServer())
    assert other_2xx.records == [] and store == {}
    relayed = session(store, TX + MSG)
    assert len(relayed.run.server.messages) == 1  # not suppressed: never recorded


def test_store_failure_relays_the_message() -> None:
    store: dict[str, str] = {}
    session(store, TX + MSG)
    h = DedupeHarness(store)
    h.failing = True
    h.start()
    h.client(TX + MSG + b"QUIT\r\n")
    h.client_eof()
    assert len(h.run.server.messages) == 1  # delivered, with the server's own 250
    assert b"250 2.0.0 Ok: queued as Q1" in h.run.replies()


def test_the_dot_and_pipelined_commands_wait_for_the_answer() -> None:
    h = DedupeHarness({}, defer=True)
    h.start()
    h.client(TX + MSG + b"RSET\r\nQUIT\r\n")
    server = h.run.server
    assert server.received.endswith(b"..stuffed\r\n")  # all but ".\r\n"
    assert server.messages == [] and b"RSET" not in server.received
    h.answer()
    assert server.messages == [MSG[: -len(b".\r\n")]]
    assert server.received.endswith(b"RSET\r\nQUIT\r\n")
    replies = h.run.replies()
    assert replies[-3:] == [b"250 2.0.0 Ok: queued as Q1", b"250 2.0.0 Ok", b"221 2.0.0 Bye"]


def test_server_lost_while_the_dot_is_held_is_never_a_250() -> None:
    store: dict[str, str] = {}
    session(store, TX + MSG)
    h = DedupeHarness(store, defer=True)
    h.start()
    h.client(TX + MSG)
    h.server_drops()
    h.answer()  # a hit, but too late: the client already has its 4xx
    replies = h.run.replies()
    assert replies[-1].startswith(b"4")
    assert not any(r.startswith(b"250 2.0.0 Already") for r in replies)


def test_off_by_default_no_lookup() -> None:
    h = DedupeHarness({}, policy=Policy(hostname="gw.example.test"))
    h.start()
    h.client(TX + MSG)
    h.client_eof()
    assert h.lookups == [] and h.records == []
    assert len(h.run.server.messages) == 1


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, len(TX + MSG) - 1), max_size=12), st.booleans())
def test_every_segmentation_gives_the_same_outcome(cuts: list[int], normalize: bool) -> None:
    policy = POLICY
    if normalize:
        policy = Policy(hostname="gw.example.test", dedupe=True, smuggling=Smuggling.NORMALIZE)
    store: dict[str, str] = {}
    first = session(store, TX + MSG, tuple(cuts), policy=policy)
    assert first.run.server.messages == [MSG[: -len(b".\r\n")]]
    again = session(store, TX + MSG, tuple(cuts), policy=policy)
    assert b"250 2.0.0 Already accepted as Q1" in again.run.replies()
    assert all(s.messages == [] for s in again.run.servers)
    assert not again.run.servers[0].received.endswith(b"\r\n.\r\n")


def test_tracker_holds_at_least_the_final_lf() -> None:
    t = Tracker()
    assert bytes(t.hold(b"abc\r\n.\r\n")) == b"abc\r\n" and t.held == b".\r\n"
    assert bytes(t.hold(b"\n")) == b"" and t.held == b"\n"
    t.mail_accepted(b"MAIL FROM:<a@example.org> SIZE=10\r\n")
    t.data_started()
    t.feed(b"x")
    t.hold(b"\r\n.\r\n")
    assert t.end_key() is None  # no accepted recipient
    t.rcpt_accepted(b"RCPT TO:<b@Example.NET>\r\n")
    t.data_started()
    t.feed(b"x")
    t.hold(b"\r\n.\r\n")
    key = t.end_key()
    assert key is not None and len(key) == 64
    assert key != transaction_key("a@example.org", ["b@example.net"], b"other")


def test_queue_ids_of_common_servers() -> None:
    assert queue_id("2.0.0 Ok: queued as 4TqAbC1") == "4TqAbC1"  # Postfix
    assert queue_id("OK id=1rXyZ-000123-AB") == "1rXyZ-000123-AB"  # Exim
    assert queue_id("2.6.0 <m@h> [InternalId=1234, Hostname=x] Queued mail") == "1234"
    assert queue_id("2.0.0 x1234567 Message accepted for delivery") == "x1234567"  # Sendmail
    assert queue_id("ok 1701234567 qp 12345") == "12345"  # qmail
    assert queue_id("2.0.0 Ok") == "" and queue_id("2.0.0") == "" and queue_id("") == ""
    assert queue_id("queued as \x1b[31mred") == "[31mred"  # printable only


def test_answer_ok_names_no_queue_id() -> None:
    """``[dedupe] answer = "ok"``: a client that sends another's exact bytes learns no
    queue ID and no "already" (docs/scale-out.md); the copy is suppressed all the same."""
    policy = dataclasses.replace(POLICY, dedupe_answer=DedupeReply.OK)
    store: dict[str, str] = {}
    session(store, TX + MSG + b"QUIT\r\n", policy=policy)
    again = session(store, TX + MSG + b"QUIT\r\n", policy=policy)
    assert again.run.replies()[-2:] == [b"250 2.0.0 Ok", b"221 2.0.0 Bye"]
    assert all(s.messages == [] for s in again.run.servers)
