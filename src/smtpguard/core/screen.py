"""Protocol screens of bots: what a real MTA never does on the wire, and a bot often
does (docs/screening.md).

Theory of operation
-------------------
The gateway reads every client byte before the server does and knows when it wrote
each reply, so it can tell what the server behind it cannot:

* **Non-SMTP clients.** The first octets of the session are matched, as they arrive,
  against the openings of other protocols (``GET ``, ``POST ``, ``CONNECT ``,
  ``USER ``, a TLS ClientHello ``16 03``). The verdict comes at the octet that decides
  it, whatever the segmentation: a web client or a TLS client on the plaintext port
  is dropped at once, not answered with one 500 per line.
* **Unauthorised pipelining** (RFC 2920 §3.1; RFC 5321 §4.1.4). The screen counts
  the client's octets as they arrive (``received``, a stream offset) and, each time
  the gateway sends a reply to the client, notes how many had arrived then
  (``answered_at``). A command line is *sent ahead* when its first octet arrived
  before the reply to the line before it was sent: either that reply is still owed
  when the line is read, or the line starts before ``answered_at``. This is the
  timing on the gateway's side of the wire, so it is the same in any segmentation
  that keeps the server's replies where they were; a line the gateway answers itself
  and the next line, in one segment, are sent ahead (the second arrived before the
  answer to the first was written), the same two lines in two reads are not.
  With PIPELINING offered to the client the screen is quiet.
* **Pregreet (early talkers).** With ``greet_wait``, the session sends the first line
  of a multi-line greeting (``220-``) at once, holds the server's greeting until the
  wait is over (or the store says the address passed before), then sends it as the
  rest. A client that sends anything before that is an early talker: a real MTA
  waits for the whole greeting (RFC 5321 §4.3.1, §4.5.3.2.1). An address that waited
  is remembered in the shared store for ``pass_ttl`` (``PassRecord``).
* **Error penalties.** Each 4xx/5xx reply the client gets (the gateway's own or the
  server's) is counted; at ``error_limit`` the session is closed. With
  ``error_delay``, each error reply after the third is held (a tarpit), longer for
  each one, up to ``error_delay_cap``: the session's replies wait behind it, in order;
  a 2xx/3xx is never held for its own sake, and a 421 (the session is closing) never.
  The hold is a deadline the session arms as its timer: nothing waits but this
  session.

The screen is fed what it needs (octets arriving, replies sent, where a command line
starts, whether a reply is owed, whether PIPELINING was offered) and returns
decisions (:class:`Caught`); the session applies them. It holds no session.
"""

from __future__ import annotations

from typing import Final

from smtpguard.core.grammar import Reply, make_reply
from smtpguard.core.policy import ScreenAction, Screens

# Openings of other protocols, matched case-blind (the ClientHello is binary).
# RFC 9110 §9.3 methods, RFC 1939 §7 / RFC 959 USER, RFC 8446 §5.1 record header
# (content type 22, legacy version 3.x).
NON_SMTP_OPENINGS: Final = (
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"OPTIONS ",
    b"CONNECT ",
    b"USER ",
    b"\x16\x03",
)
_LONGEST: Final = max(len(p) for p in NON_SMTP_OPENINGS)
# Error replies answered at once before the tarpit starts (Postfix's
# smtpd_soft_error_limit plays this part; its default is 10, ours is stricter).
TARPIT_FREE: Final = 3
# Names of the openings, for the event text.
_NAMES: Final = {b"\x16\x03": "a TLS ClientHello"}

NON_SMTP_REPLY: Final = make_reply(
    554, "5.7.0 This is an SMTP server; other protocols are not spoken here"
).raw
PREGREET_REPLY: Final = make_reply(
    554, "5.5.1 Protocol error: talking before the greeting was complete"
).raw
PIPELINING_REPLY: Final = make_reply(
    503, "5.5.0 Command sent before the reply to the previous one (PIPELINING not offered)"
).raw
PIPELINING_DROP: Final = make_reply(
    421, "4.7.0 Commands sent before their replies (PIPELINING not offered), closing connection"
).raw


def error_limit_reply(limit: int) -> bytes:
    return make_reply(421, f"4.7.0 Too many errors ({limit}), closing connection").raw


class Caught:
    """A screen caught the client: emit ``event_id`` with ``message`` and the action,
    then apply ``action`` (``reply``: what the client is told when it is refused or
    dropped; ``at_once``: a drop says it now and closes, without the replies owed,
    else after them). ``first``: the first catch of this screen in the session (the
    event is emitted once per session and screen; metrics count caught sessions).
    ``then``: a second screen caught the same octets (applied after a ``log``)."""

    __slots__ = ("action", "at_once", "event_id", "first", "message", "reply", "then")

    def __init__(
        self,
        event_id: str,
        message: str,
        action: ScreenAction,
        reply: bytes,
        first: bool,
        at_once: bool = False,
        then: Caught | None = None,
    ) -> None:
        self.event_id: Final = event_id
        self.message: Final = message
        self.action: Final = action
        self.reply: Final = reply
        self.first: Final = first
        self.at_once: Final = at_once
        self.then: Final = then


def opening(prefix: bytes) -> bytes | None:
    """The other protocol's opening ``prefix`` starts with; ``b""`` while the prefix
    could still become one; None once it cannot."""
    upper = prefix.upper()
    undecided = False
    for p in NON_SMTP_OPENINGS:
        if upper.startswith(p):
            return p
        if p.startswith(upper):
            undecided = True
    return b"" if undecided else None


class Screen:
    """The protocol screens of one session, as :class:`Screens` turns them on."""

    __slots__ = (
        "_errors",
        "_head",
        "_held",
        "_pipelining_caught",
        "answered_at",
        "greet_until",
        "now",
        "policy",
        "received",
        "release_at",
        "talked",
    )

    def __init__(self, policy: Screens) -> None:
        self.policy = policy
        self.received = 0  # client octets so far: the offset of the next one
        self.answered_at = 0  # ``received`` when the last reply was sent
        # The session's first octets while the non-SMTP screen is undecided (None:
        # decided, or the screen is off).
        self._head: bytes | None = b"" if policy.non_smtp else None
        self._pipelining_caught = False
        self._errors = 0  # error replies sent (with error_limit or error_delay on)
        self.now = 0.0  # the time of the event being handled (the session sets it)
        self.release_at: float | None = None  # an error reply is held until then
        self.greet_until: float | None = None  # the greeting is held until then
        self._held: Reply | None = None  # the server's greeting, held
        self.talked = False  # the client sent something while the greeting was held

    # -- octets arriving -------------------------------------------------------------
    def arrived(self, data: bytes) -> Caught | None:
        """Client octets arrived (any phase): counted; the non-SMTP verdict at the
        octet that decides it."""
        self.received += len(data)
        other = self._non_smtp(data) if self._head is not None else None
        if self.greet_until is not None and data and not self.talked:
            self.talked = True
            return self._early(other)  # decided at the first octet
        return other

    def _early(self, then: Caught | None) -> Caught:
        return Caught(
            "SG-SCREEN-PREGREET",
            "client talked before the greeting was complete",
            self.policy.pregreet_action,
            PREGREET_REPLY,
            True,
            at_once=True,
            then=then,
        )

    def _non_smtp(self, data: bytes) -> Caught | None:
        head = self._head
        assert head is not None
        head += data[: _LONGEST - len(head)]
        found = opening(head)
        if found == b"":
            self._head = head
            return None
        self._head = None
        if found is None:
            return None
        name = _NAMES.get(found) or repr(found.decode("ascii").strip())
        return Caught(
            "SG-SCREEN-NON-SMTP",
            f"not an SMTP client: the session opened with {name}",
            self.policy.non_smtp_action,
            NON_SMTP_REPLY,
            True,
            at_once=True,
        )

    # -- the greeting wait -------------------------------------------------------------
    def greet(self) -> float:
        """The session starts with ``greet_wait`` on: the greeting is held until the
        time returned."""
        at = self.greet_until = self.now + self.policy.greet_wait
        return at

    def hold(self, greeting: Reply) -> bool:
        """The server greeted: True while its greeting is to be held."""
        if self.greet_until is None:
            return False
        self._held = greeting
        return True

    def release(self) -> Reply | None:
        """The wait is over: the held greeting, if the server has greeted."""
        self.greet_until = None
        held, self._held = self._held, None
        return held

    # -- replies sent ----------------------------------------------------------------
    def replied(self, reply: bytes) -> Caught | None:
        """The gateway sent ``reply`` to the client (a reply to a client line): noted
        for the pipelining screen, counted if it is an error (4xx/5xx but 421)."""
        self.answered_at = self.received
        policy = self.policy
        if not (policy.error_limit or policy.error_delay) or reply[:1] not in (b"4", b"5"):
            return None
        if reply[:3] == b"421":  # the session is closing anyway
            return None
        self._errors += 1
        limit = policy.error_limit
        if self._errors != limit:  # once: the session closes on it
            return None
        return Caught(
            "SG-SCREEN-ERRORS",
            f"{self._errors} error replies in the session (limit {limit})",
            ScreenAction.DROP,
            error_limit_reply(limit),
            True,
        )

    def tarpit(self, reply: bytes) -> float | None:
        """The reply at the head of the pipeline is ready to go at ``now``: None to
        send it now, else the time until which it is held (arm the timer for it)."""
        policy = self.policy
        at = self.release_at
        if at is not None:
            if self.now < at:
                return at
            self.release_at = None  # its time has come
            return None
        if not policy.error_delay or reply[:1] not in (b"4", b"5") or reply[:3] == b"421":
            return None
        excess = self._errors + 1 - TARPIT_FREE
        if excess <= 0:
            return None
        at = self.release_at = self.now + min(policy.error_delay_cap, policy.error_delay * excess)
        return at

    # -- command lines ---------------------------------------------------------------
    def command(self, line: bytes, held: int, owed: bool, offered: bool) -> Caught | None:
        """A command ``line`` was read, ``held`` client octets still unread after it;
        ``owed``: a reply to an earlier line is still owed; ``offered``: PIPELINING
        was offered to the client. A verdict when the line was sent ahead without
        PIPELINING (with ``reject``, a QUIT sent ahead is only logged: it ends the
        session anyway)."""
        policy = self.policy
        if not policy.pipelining or offered:
            return None
        start = self.received - held - len(line)
        if not owed and start >= self.answered_at:
            return None
        action = policy.pipelining_action
        if action is ScreenAction.REJECT and line[:5].upper() in (b"QUIT\r", b"QUIT "):
            action = ScreenAction.LOG
        first = not self._pipelining_caught
        self._pipelining_caught = True
        return Caught(
            "SG-SCREEN-PIPELINING",
            "command sent before the reply to the previous one, PIPELINING not offered",
            action,
            PIPELINING_DROP if action is ScreenAction.DROP else PIPELINING_REPLY,
            first,
        )
