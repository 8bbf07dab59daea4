"""The upstream connection: reply framing, its life cycle, and the gateway's own
handshake with the server.

The link knows nothing of the session. It is fed the server's bytes
(:meth:`UpstreamLink.feed`, then :meth:`~UpstreamLink.next_reply` until it has no
more), the replies the session routes to it (the greeting, the replies to the
gateway's own commands), the server-side TLS handshake and the session's requests
(reconnect, abort); it writes its commands into the action list and the server's
deadline, and returns what the session must do (:class:`After`, or
:class:`Secured`: the client's EHLO reply, once the upstream is secured).

The handshake is its own object, :class:`Handshake`, made when the server greets
with 220 (or when terminate mode secures the upstream after the client's EHLO) and
dropped when it hands the connection over, ready. It is an explicit list of steps:
``XCLIENT_EHLO`` and ``XCLIENT`` (tell the server the real client, when
configured), ``REPLAY`` (a fresh connection after a refused message replays the
client's HELO/EHLO), ``STARTTLS`` then ``TLS_EHLO`` (terminate mode secures the
upstream when the server offers it, RFC 3207 §4.2: EHLO again). Each step sends one
command; its reply decides the next. The replies to these commands never reach the
client. They only run while client input is held (upstream not READY, or the client
waiting for its EHLO reply), so they never interleave with client commands.
"""

from __future__ import annotations

import enum
from typing import Final

from smtpguard.core import replies
from smtpguard.core.actions import CloseServer, OpenServer, ServerOutcome, StartTls
from smtpguard.core.banner import greeting
from smtpguard.core.deadlines import Deadlines
from smtpguard.core.events import Side
from smtpguard.core.grammar import (
    REPLY_LINE_LIMIT,
    LineError,
    Reply,
    ReplyAssembler,
    ehlo_keywords,
    frame_reply_line,
)
from smtpguard.core.output import Output
from smtpguard.core.phases import NEXT_UPSTREAM, Link, NotInTable, Upstream
from smtpguard.core.pipeline import Slot
from smtpguard.core.policy import Policy
from smtpguard.core.policy import StartTls as StartTlsPolicy


class Step(enum.Enum):
    XCLIENT_EHLO = "EHLO (does the server offer XCLIENT?)"
    XCLIENT = "XCLIENT"
    REPLAY = "replay the client's HELO/EHLO"
    STARTTLS = "STARTTLS"
    TLS_EHLO = "EHLO after TLS"


class After(enum.Enum):
    """What the link decided for the session (which applies it)."""

    NOTHING = "nothing for the session"
    CLOSE = "421 greeting relayed: close once every owed reply is flushed"
    REFUSE = "the server will not take the client's address: refuse the client"
    UNAVAILABLE = "no usable fresh connection: 421 to the client, close"
    LOST = "the connection failed: handle it as lost"
    SIGNED_OFF = "the client's authentication cannot be carried over: 421, close"


class Secured:
    """The upstream is secured (or could not be): ``reply`` is the client's EHLO
    reply, to fill ``slot`` with."""

    __slots__ = ("reply", "slot")

    def __init__(self, slot: Slot, reply: Reply) -> None:
        self.slot: Final = slot
        self.reply: Final = reply


# The server would see the client as the gateway (its XCLIENT refused or not offered).
XCLIENT_REFUSED = replies.dropped("Client address not accepted by the mail server")


def xtext(value: str) -> str:
    """``value`` as xtext (RFC 3461 §4), the form of every XCLIENT attribute value
    (Postfix XCLIENT_README): "!" to "~" as they are, except "+" and "=", and every
    other octet of its UTF-8 form as ``+HH`` (a lone surrogate too: any text)."""
    out: list[str] = []
    for byte in value.encode("utf-8", "surrogatepass"):
        if 0x21 <= byte <= 0x7E and byte != 0x2B and byte != 0x3D:
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def xtext_addr(ip: str) -> str:
    """XCLIENT ADDR value: IPv6 addresses carry the ``IPV6:`` prefix (Postfix). A
    zone (``%eth0``, a link-local peer as the kernel names it) is dropped: it names
    an interface of this host, and Postfix's address syntax has no room for it."""
    ip = ip.partition("%")[0]
    return xtext(f"IPV6:{ip}" if ":" in ip else ip)


def xclient_line(peer: tuple[str, int]) -> bytes:
    """The XCLIENT command for the client at ``peer``; every value xtext-encoded."""
    ip, port = peer
    line = f"XCLIENT ADDR={xtext_addr(ip)} PORT={xtext(str(port))} NAME=[UNAVAILABLE]\r\n"
    return line.encode("ascii")


# What a handshake step's reply leads to (Handshake.reply).
SENT: Final = 0  # the next step's command went out: wait for its reply
DONE: Final = 1  # no step left: the connection is ready
TLS: Final = 2  # StartTls(SERVER) emitted: wait for the handshake
XCLIENT_FAILED: Final = 3  # the client is refused (the link drops the connection)
REPLAY_FAILED: Final = 4  # the replayed HELO/EHLO was refused
SECURED: Final = 5  # ``secured`` holds the client's EHLO reply


class Handshake:
    """The gateway's own exchange with a freshly greeted (or about to be secured)
    server: a list of steps, one command each, fed each reply in turn."""

    __slots__ = (
        "_deadlines", "_fallback", "_helo", "_out", "_peer", "_plan", "_policy",
        "ehlo_line", "secured", "slot", "step",
    )  # fmt: skip

    def __init__(
        self,
        policy: Policy,
        out: Output,
        deadlines: Deadlines,
        peer: tuple[str, int] | None,
        helo: bytes | None,
        ehlo_line: bytes | None,
    ) -> None:
        self._policy = policy
        self._out = out
        self._deadlines = deadlines
        self._peer = peer  # the client's address, for XCLIENT
        self._helo = helo  # the client's accepted HELO/EHLO, replayed
        self.ehlo_line = ehlo_line  # the client's EHLO, re-sent after TLS
        self._plan: list[Step] = []  # a few steps: 570 bytes less than a deque
        self.step: Step | None = None  # the command whose reply is awaited
        self.slot: Slot | None = None  # the client's EHLO slot, answered once secured
        self._fallback: Reply | None = None  # the EHLO reply if TLS cannot start
        self.secured: Reply | None = None  # with SECURED: the reply for ``slot``

    def plan_greeted(self, now: float) -> int:
        """The server greeted with 220: XCLIENT, then the replay; the first step's
        command, or DONE."""
        plan = self._plan
        if self._policy.xclient and self._peer is not None:
            plan += (Step.XCLIENT_EHLO, Step.XCLIENT)
        if self._helo is not None:
            plan.append(Step.REPLAY)
        return self.advance(now)

    def plan_tls(self, ehlo: Reply, slot: Slot | None, tls: bool) -> bool:
        """Terminate mode: STARTTLS and EHLO again first, if the server offers it
        (``ehlo``: its reply to an EHLO); ``slot`` is answered once secured."""
        if (
            self._policy.starttls is not StartTlsPolicy.TERMINATE
            or tls
            or ehlo.code != 250
            or "STARTTLS" not in ehlo_keywords(ehlo)
        ):
            return False
        self._plan[:0] = (Step.STARTTLS, Step.TLS_EHLO)
        self.slot = slot
        self._fallback = ehlo
        return True

    def awaits_tls(self) -> bool:
        return bool(self._plan) and self._plan[0] is Step.TLS_EHLO

    def advance(self, now: float) -> int:
        """Send the next step's command (SENT), or DONE."""
        if not self._plan:
            self.step = None
            return DONE
        step = self.step = self._plan.pop(0)
        policy = self._policy
        if step is Step.XCLIENT_EHLO:
            line = f"EHLO {policy.hostname}\r\n".encode()
        elif step is Step.XCLIENT:
            assert self._peer is not None
            line = xclient_line(self._peer)
        elif step is Step.REPLAY:
            assert self._helo is not None
            line = self._helo
        elif step is Step.STARTTLS:
            line = b"STARTTLS\r\n"
        else:
            line = self.ehlo_line or f"EHLO {policy.hostname}\r\n".encode()
        verb = line.split(b" ", 1)[0].rstrip(b"\r\n").decode("ascii", "replace").upper()
        self._deadlines.server = now + policy.timeouts.command
        self._out.to_server(line, verb)
        return SENT

    def reply(self, reply: Reply, now: float, tls: bool) -> int:
        """The reply to the step's command: what it leads to."""
        out = self._out
        step = self.step
        self.step = None
        if step is Step.XCLIENT_EHLO:
            if reply.code != 250 or "XCLIENT" not in ehlo_keywords(reply):
                why = "mail server does not offer XCLIENT to the gateway"
                if not self._xclient_failed("SG-XCLIENT-UNAVAILABLE", why):
                    return XCLIENT_FAILED
                self._plan.remove(Step.XCLIENT)
        elif step is Step.XCLIENT:
            # Postfix answers XCLIENT with a fresh 220 greeting, older Postfix and
            # smtp-sink with 250: any 2xx took the attributes.
            why = f"XCLIENT refused: {reply.code}"
            accepted = 200 <= reply.code < 300
            if not accepted and not self._xclient_failed("SG-XCLIENT-FAILED", why):
                return XCLIENT_FAILED
        elif step is Step.REPLAY:
            if not reply.positive:
                return REPLAY_FAILED
            self.plan_tls(reply, None, tls)
        elif step is Step.STARTTLS:
            if reply.code == 220:
                self._deadlines.server = now + self._policy.timeouts.command
                out.emit(StartTls(Side.SERVER))
                return TLS  # the handshake; then the link's tls_started() sends the EHLO
            out.event("SG-TLS-UPSTREAM-FAILED", f"server refused STARTTLS: {reply.code}")
            self._plan.clear()
            fallback = self._fallback
            assert fallback is not None
            return self._secured(fallback, now)
        elif step is Step.TLS_EHLO:
            return self._secured(reply, now)
        return self.advance(now)

    def _secured(self, reply: Reply, now: float) -> int:
        if self.slot is not None:
            self.secured = reply
            return SECURED
        return self.advance(now)

    def _xclient_failed(self, event_id: str, why: str) -> bool:
        """The server will not take the client's address. Carry on (True) only with
        ``xclient_fail_open``: the server then sees the gateway's own address, which
        a Postfix ``mynetworks`` trusts to relay. By default refuse the client."""
        if self._policy.xclient_fail_open:
            self._out.event(event_id, f"{why}; the server sees the gateway's address")
            return True
        self._out.event(event_id, f"{why}; client refused", "drop-connection")
        self._plan.clear()
        return False


class UpstreamLink:
    """One upstream connection at a time: its state (the ``UPSTREAM`` table), the
    framing of its replies, and its handshake while one runs."""

    __slots__ = (
        "_assembler", "_data", "_deadlines", "_error", "_out", "_partial", "_policy",
        "_start", "authenticated", "greeted", "handshake", "peer", "state", "tls", "tries",
    )  # fmt: skip

    def __init__(
        self, policy: Policy, out: Output, deadlines: Deadlines, peer: tuple[str, int] | None
    ) -> None:
        self._policy = policy
        self._out = out  # the session's action list
        self._deadlines = deadlines  # the server's reply deadline is the link's to set
        self.peer = peer  # the client's address, for XCLIENT
        self.state = Upstream.CONNECTING
        self.greeted = False  # the client has seen a greeting
        self.tls = False  # the upstream connection is encrypted
        # The client authenticated on this connection (a 2xx to its AUTH): a fresh one
        # cannot carry that over, since the gateway never keeps credentials.
        self.authenticated = False
        self.tries = 1  # connections tried for this one, up to policy.upstream_tries
        self.handshake: Handshake | None = None  # the gateway's own exchange, while it runs
        self._partial = bytearray()  # a reply line not complete yet
        self._assembler = ReplyAssembler()
        self._data = b""  # the server's bytes being framed (feed / next_reply)
        self._start = 0
        self._error: str | None = None  # a framing failure, reported by next_reply

    # -- state -------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """A connection is open (or being opened)."""
        state = self.state
        return state is not Upstream.DOWN and state is not Upstream.PARKED

    def move(self, trigger: Link) -> None:
        """UPSTREAM: the one way the state changes (:class:`NotInTable` if not drawn)."""
        try:
            self.state = NEXT_UPSTREAM[trigger][self.state]
        except KeyError:
            raise NotInTable("UPSTREAM", self.state, trigger) from None

    # -- framing -------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes from the server: take the replies out with :meth:`next_reply`."""
        partial = self._partial
        if partial:
            partial += data
            if 0x0A not in data:  # a byte's value: see grammar.check_line_bytes
                if len(partial) > REPLY_LINE_LIMIT:
                    self._error = "reply line too long"
                return
            data = bytes(partial)
            partial.clear()
        self._data = data
        self._start = 0

    def next_reply(self) -> Reply | str | None:
        """The next complete reply; a ``str`` when the server's bytes are not replies
        (why: the session fails the link); None when more bytes are needed."""
        error = self._error
        if error is not None:
            self._error = None
            return error
        data = self._data
        start, end = self._start, len(data)
        while start < end:
            nl = data.find(b"\n", start)
            if nl < 0:
                partial = self._partial
                partial += data[start:]
                self._data = b""
                if len(partial) > REPLY_LINE_LIMIT:
                    return "reply line too long"
                return None
            line = data if start == 0 and nl + 1 == end else data[start : nl + 1]
            start = self._start = nl + 1
            try:
                reply = self._assembler.add(frame_reply_line(line))
            except LineError as exc:
                self._data = b""
                return exc.reason
            if reply is not None:
                return reply
        self._data = b""
        return None

    # -- greeting and handshake -------------------------------------------------------
    def connected(self, now: float) -> None:
        if self.state is Upstream.CONNECTING:
            self.move(Link.CONNECTED)
            self._deadlines.server = now + self._policy.timeouts.greeting

    def on_greeting(
        self, reply: Reply, helo: bytes | None, ehlo_line: bytes | None, now: float
    ) -> After | Secured:
        """The server's greeting (the state is GREETING): the first is relayed to the
        client; a 220 starts the handshake, ``helo`` to be replayed. A 4xx greeting
        moves to the next upstream server first, while tries remain."""
        if reply.code == 220:
            self._out.emit(ServerOutcome(True))
        elif 400 <= reply.code < 500 and self.failover(f"greeting {reply.code}", now):
            return After.NOTHING
        if not self.greeted:
            self.greeted = True
            self._deadlines.server = None
            self._out.to_client(greeting(reply, self._policy))
            if reply.code != 220:  # 554 & co: the server's decision, relayed
                self.move(Link.REFUSED)
                return After.CLOSE if reply.code == 421 else After.NOTHING
        elif reply.code != 220:
            return self.reconnect_failed(f"greeting {reply.code} on reconnect")
        self.move(Link.GREETED)
        hs = self.handshake = Handshake(
            self._policy, self._out, self._deadlines, self.peer, helo, ehlo_line
        )
        return self._after(hs, hs.plan_greeted(now))

    def on_step_reply(self, reply: Reply, now: float) -> After | Secured:
        """The reply to the handshake's command (``handshake`` is set)."""
        hs = self.handshake
        assert hs is not None
        return self._after(hs, hs.reply(reply, now, self.tls))

    def _after(self, hs: Handshake, result: int) -> After | Secured:
        """What a handshake result means for the link, and for the session."""
        if result in (SENT, TLS):
            return After.NOTHING
        self.handshake = None  # handed over (or given up)
        if result == DONE:
            self.move(Link.READY)
            self._deadlines.server = None
            return After.NOTHING
        if result == SECURED:
            assert hs.slot is not None and hs.secured is not None
            self.move(Link.READY)
            return Secured(hs.slot, hs.secured)
        if result == REPLAY_FAILED:
            return self.reconnect_failed("replayed HELO/EHLO refused")
        # XCLIENT_FAILED: the client is refused
        self._out.emit(CloseServer(abort=True))
        if self.state is not Upstream.DOWN:
            self.move(Link.LOST)
        self._deadlines.server = None
        return After.REFUSE

    def secure_first(self, ehlo: Reply, slot: Slot, ehlo_line: bytes | None, now: float) -> bool:
        """Terminate mode, the client's EHLO answered: if the server offers STARTTLS,
        secure the upstream before the client sees the reply, which ``slot`` gets
        after TLS (:class:`Secured`, or this one if TLS cannot start). False: nothing
        to do."""
        if self._policy.starttls is not StartTlsPolicy.TERMINATE or self.tls:
            return False  # the usual case, decided before making anything
        hs = self.handshake
        if hs is None:
            hs = Handshake(self._policy, self._out, self._deadlines, self.peer, None, ehlo_line)
        else:
            hs.ehlo_line = ehlo_line
        if not hs.plan_tls(ehlo, slot, self.tls):
            return False
        self.handshake = hs
        self.move(Link.SECURE)
        hs.advance(now)
        return True

    def tls_started(self, now: float) -> None:
        """The server-side TLS handshake is done: EHLO again (RFC 3207 §4.2)."""
        hs = self.handshake
        if hs is None or not hs.awaits_tls():
            return  # no handshake was asked for (a late or stray event): nothing to do
        self.tls = True
        hs.advance(now)

    # -- loss and reconnect ------------------------------------------------------------
    def reconnect(self, now: float) -> None:
        """Drop this connection (if any) and open a fresh one, in clear."""
        self.tries = 1
        self.authenticated = False
        self._fresh(now)

    def renew(self, now: float) -> After:
        """A fresh connection for the session's next transaction (this one is spent:
        a refused or cut message, or a suppressed copy), the client's HELO replayed.
        A connection the client authenticated on is not replaced: the client is told
        to reconnect and authenticate again (``SIGNED_OFF``), never left to find its
        next message refused for want of an authentication it believes it has."""
        if self.authenticated:
            self.abort()
            return After.SIGNED_OFF
        self.reconnect(now)
        return After.NOTHING

    def park(self, said_421: bool) -> None:
        """The server closed the connection (or said 421 on its own) while nothing was
        owed and no transaction was open: nothing is lost, and the client's next
        command opens a fresh connection (:meth:`reconnect`)."""
        if said_421:
            self._out.emit(CloseServer(abort=False))
        self.move(Link.IDLE_CLOSED)
        self._deadlines.server = None

    def failover(self, why: str, now: float) -> bool:
        """This connection failed before its 220 greeting (refused, timed out, lost,
        a 4xx greeting): the driver is told (its health record of the server), and
        while tries remain the next connection is opened, which the driver makes to
        the next upstream server. True: it is on its way; the client saw nothing."""
        self._out.emit(ServerOutcome(False, why))
        if self.tries >= self._policy.upstream_tries:
            return False
        self.tries += 1
        self._fresh(now)
        return True

    def _fresh(self, now: float) -> None:
        out = self._out
        if self.live:
            out.emit(CloseServer(abort=True))
        self._partial.clear()
        self._data = b""  # what the old connection sent after the reply being handled
        self._start = 0
        self._assembler = ReplyAssembler()
        self._error = None
        self.handshake = None
        self.tls = False
        self.move(Link.RECONNECT)
        self._deadlines.server = now + self._policy.timeouts.connect
        out.emit(OpenServer())

    def reconnect_failed(self, why: str) -> After:
        self._out.event("SG-UPSTREAM-RECONNECT-FAILED", why)
        self._out.emit(CloseServer(abort=True))
        self.handshake = None
        if self.state is not Upstream.DOWN:
            self.move(Link.LOST)
        return After.UNAVAILABLE

    def failed(self, why: str) -> After:
        """The upstream misbehaved: drop it; the session handles it as lost."""
        self._out.event("SG-UPSTREAM-ERROR", f"mail server connection dropped: {why}")
        self._out.emit(CloseServer(abort=True))
        return After.LOST

    def abort(self) -> None:
        """Close now, without the terminator (the server discards a partial message)."""
        if self.live:
            self._out.emit(CloseServer(abort=True))
            self.move(Link.LOST)
        self._deadlines.server = None
