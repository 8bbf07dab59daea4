"""The server closes its connection while the session is idle.

Postfix closes a connection idle past ``smtpd_timeout`` (saying ``421 4.4.2 … Error:
timeout exceeded`` first), as does a server restarted or taken out of service. A
sender that keeps its session open between messages (Postfix's connection cache)
has then lost nothing: no reply is owed, no transaction is open. So the client sees
nothing, and its next command opens a fresh connection (to a healthy upstream
server, its HELO replayed), where it is relayed as if nothing had happened. Where
something would be lost, the client is told: a transaction open (its MAIL accepted)
gets the server's 421 or ``421 4.4.2``; a session the client authenticated on gets
``421 4.4.2`` (the gateway never keeps credentials, so no fresh connection could
carry the authentication over), as it does after a refused message."""

from __future__ import annotations

from smtpguard.core import replies
from smtpguard.core.actions import (
    CloseClient,
    CloseServer,
    OpenServer,
    PolicyEvent,
    ServerOutcome,
)
from smtpguard.core.actions import ToClient as C
from smtpguard.core.actions import ToServer as S
from smtpguard.core.events import (
    ClientData,
    ClientEof,
    ServerClosed,
    ServerConnected,
    ServerData,
    Shutdown,
    Start,
)
from smtpguard.core.policy import Mode, Policy
from smtpguard.core.session import Session
from tests.core.playbook import Playbook
from tests.core.test_failover import GREETING, SHOWN, TWO

ESMTP = Policy.for_mode(Mode.ESMTP, hostname="gw.example.test")
IDLE_CLOSED = PolicyEvent(
    "SG-UPSTREAM-IDLE-CLOSED",
    "mail server closed the connection between transactions: the next command opens a fresh one",
    "log",
)
TIMEOUT_421 = b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
REFUSED = b"550 5.6.0 Message refused: bare LF in message data; lines must end in CRLF\r\n"


def greeted(
    policy: Policy = TWO, hello: bytes = b"HELO c\r\n", reply: bytes = b"250 mx\r\n"
) -> Playbook:
    """A session past its HELO (or ``hello``), the server ready."""
    return (
        Playbook(Session(policy))
        >> Start()
        << OpenServer()
        >> ServerConnected()
        >> ServerData(GREETING)
        << ServerOutcome(True)
        << C(SHOWN)
        >> ClientData(hello)
        << S(hello)
        >> ServerData(reply)
        << C(reply)
    )


def reopened(book: Playbook) -> Playbook:
    """The fresh connection: greeted, the HELO replayed and accepted."""
    return (
        book
        << OpenServer()
        >> ServerConnected()
        >> ServerData(GREETING)
        << ServerOutcome(True)
        << S(b"HELO c\r\n")
        >> ServerData(b"250 mx\r\n")
    )


def relayed(book: Playbook, line: bytes, reply: bytes = b"250 2.1.0 Ok\r\n") -> Playbook:
    """The client's ``line``, held while the connection was reopened, relayed on it."""
    return reopened(book) << S(line) >> ServerData(reply) << C(reply)


def in_transaction() -> Playbook:
    """A session with its MAIL accepted."""
    return (
        greeted()
        >> ClientData(b"MAIL FROM:<a@x.org>\r\n")
        << S(b"MAIL FROM:<a@x.org>\r\n")
        >> ServerData(b"250 ok\r\n")
        << C(b"250 ok\r\n")
    )


def test_a_server_closing_an_idle_session_is_reopened_by_the_next_command() -> None:
    line = b"MAIL FROM:<a@x.org>\r\n"
    assert relayed(greeted() >> ServerClosed() << IDLE_CLOSED >> ClientData(line), line)


def test_a_421_between_messages_is_not_shown_and_the_next_message_goes_through() -> None:
    """Postfix's idle timeout after a delivered message: its 421 and close. The
    client's next transaction is relayed on a fresh connection."""
    book = (
        greeted()
        >> ClientData(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
        << S(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
        >> ServerData(b"250 ok\r\n250 ok\r\n354 go\r\n")
        << C(b"250 ok\r\n250 ok\r\n354 go\r\n")
        >> ClientData(b"hi\r\n.\r\n")
        << S(b"hi\r\n.\r\n")
        >> ServerData(b"250 2.0.0 Ok: queued as 1\r\n")
        << C(b"250 2.0.0 Ok: queued as 1\r\n")
        >> ServerData(TIMEOUT_421)
        << IDLE_CLOSED
        << CloseServer(abort=False)
        >> ServerClosed()  # the close that follows its 421: already handled
        >> ClientData(b"MAIL FROM:<c@x.org>\r\n")
    )
    assert relayed(book, b"MAIL FROM:<c@x.org>\r\n")


def test_the_fresh_connection_fails_over_to_the_next_server() -> None:
    book = (
        greeted()
        >> ServerClosed()
        << IDLE_CLOSED
        >> ClientData(b"NOOP\r\n")
        << OpenServer()
        >> ServerClosed()  # refused: this server is down now
        << ServerOutcome(False, "failed while connecting")
    )
    assert relayed(book, b"NOOP\r\n", b"250 2.0.0 Ok\r\n")


def test_every_server_down_when_the_client_comes_back_is_421_at_once() -> None:
    assert (
        greeted()
        >> ServerClosed()
        << IDLE_CLOSED
        >> ClientData(b"MAIL FROM:<a@x.org>\r\n")
        << OpenServer()
        >> ServerClosed()
        << ServerOutcome(False, "failed while connecting")
        << OpenServer()
        >> ServerClosed()
        << ServerOutcome(False, "failed while connecting")
        << PolicyEvent("SG-UPSTREAM-RECONNECT-FAILED", "upstream lost while connecting")
        << CloseServer(abort=True)
        << C(replies.SERVICE_UNAVAILABLE)
        << CloseClient()
    )


def test_quit_after_an_idle_close_is_the_server_s_221() -> None:
    """Never a 2xx the server did not send, not even to QUIT."""
    book = greeted() >> ServerClosed() << IDLE_CLOSED >> ClientData(b"QUIT\r\n")
    bye = b"221 2.0.0 Bye\r\n"
    assert relayed(book, b"QUIT\r\n", bye) << CloseServer(abort=False) << CloseClient()


def test_a_client_eof_after_an_idle_close_opens_nothing() -> None:
    assert greeted() >> ServerClosed() << IDLE_CLOSED >> ClientEof() << CloseClient()


def test_a_drain_after_an_idle_close_ends_the_session_at_once() -> None:
    assert (
        greeted()
        >> ServerClosed()
        << IDLE_CLOSED
        >> Shutdown()
        << C(replies.SHUTTING_DOWN)
        << CloseClient()
    )


def test_a_close_with_a_transaction_open_is_421() -> None:
    """MAIL accepted: the server's transaction is gone, which a fresh connection
    would not have; the client must hear it (and retries the whole message)."""
    assert in_transaction() >> ServerClosed() << C(replies.UPSTREAM_LOST) << CloseClient()


def test_a_421_with_a_transaction_open_is_relayed() -> None:
    assert (
        in_transaction()
        >> ServerData(TIMEOUT_421)
        << C(TIMEOUT_421)
        << CloseServer(abort=False)
        << CloseClient()
    )


def authenticated() -> Playbook:
    return (
        greeted(ESMTP, b"EHLO c\r\n", b"250-mx\r\n250 AUTH PLAIN\r\n")
        >> ClientData(b"AUTH PLAIN AGFAYg==\r\n")
        << S(b"AUTH PLAIN AGFAYg==\r\n")
        >> ServerData(b"235 2.7.0 Authentication successful\r\n")
        << C(b"235 2.7.0 Authentication successful\r\n")
    )


def test_a_close_after_the_client_authenticated_is_421() -> None:
    assert authenticated() >> ServerClosed() << C(replies.UPSTREAM_LOST) << CloseClient()


def test_a_refused_message_after_the_client_authenticated_ends_the_session() -> None:
    """The message is refused and its connection aborted; a fresh one would not know
    the client's authentication, so the client is told to come back, not left to
    have its next message refused for want of it."""
    assert refusing(authenticated()) << C(REFUSED + replies.UPSTREAM_RENEWED) << CloseClient()


def refusing(book: Playbook) -> Playbook:
    """A message the gateway refuses (a bare LF): its connection aborted."""
    return (
        book
        >> ClientData(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
        << S(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n")
        >> ServerData(b"250 ok\r\n250 ok\r\n354 go\r\n")
        << C(b"250 ok\r\n250 ok\r\n354 go\r\n")
        >> ClientData(b"\nbare LF\r\n.\r\n")
        << PolicyEvent("SG-DATA-BAD-BYTES", "bare LF in message data: message refused", "reject")
        << CloseServer(abort=True)
    )


def after_a_refused_message() -> Playbook:
    """A message refused by the gateway, and the fresh connection opened after it."""
    return reopened(refusing(greeted()) << C(REFUSED))


def test_a_refused_message_ends_its_transaction_for_an_idle_close() -> None:
    """The gateway's refusal at the end of data ends the transaction as a server's
    reply does: a close after it finds the session idle."""
    book = after_a_refused_message() >> ServerClosed() << IDLE_CLOSED >> ClientData(b"NOOP\r\n")
    assert relayed(book, b"NOOP\r\n", b"250 2.0.0 Ok\r\n")


def test_a_refused_message_ends_its_transaction_for_the_drain() -> None:
    assert (
        after_a_refused_message()
        >> Shutdown()
        << C(replies.SHUTTING_DOWN)
        << CloseServer(abort=False)
        << CloseClient()
    )
