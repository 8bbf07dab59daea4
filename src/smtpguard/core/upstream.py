"""The upstream connection: reply framing, its life cycle, and the gateway's own
handshake with the server.

The handshake is an explicit list of steps, planned when the server greets:
``XCLIENT_EHLO`` and ``XCLIENT`` (tell the server the real client, when configured),
``REPLAY`` (a fresh connection after a refused message replays the client's
HELO/EHLO), ``STARTTLS`` then ``TLS_EHLO`` (terminate mode secures the upstream when
the server offers it, RFC 3207 §4.2: EHLO again). Each step sends one command; its
reply decides the next. The replies to these commands never reach the client. They
only run while client input is held (upstream not READY, or the client waiting for
its EHLO reply), so they never interleave with client commands.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from smtpguard.core import replies
from smtpguard.core.actions import CloseServer, OpenServer, StartTls
from smtpguard.core.banner import greeting
from smtpguard.core.events import Side
from smtpguard.core.grammar import (
    REPLY_LINE_LIMIT,
    LineError,
    Reply,
    ReplyAssembler,
    ehlo_keywords,
    frame_reply_line,
)
from smtpguard.core.phases import NEXT_UPSTREAM, Link, Upstream
from smtpguard.core.policy import StartTls as StartTlsPolicy

if TYPE_CHECKING:
    from smtpguard.core.session import Session


class Step(enum.Enum):
    XCLIENT_EHLO = "EHLO (does the server offer XCLIENT?)"
    XCLIENT = "XCLIENT"
    REPLAY = "replay the client's HELO/EHLO"
    STARTTLS = "STARTTLS"
    TLS_EHLO = "EHLO after TLS"


Then = Callable[[Reply, float], None]  # what the secured EHLO reply goes to

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


class UpstreamLink:
    __slots__ = (
        "_assembler",
        "_fallback",
        "_partial",
        "_plan",
        "_s",
        "_then",
        "greeted",
        "peer",
        "state",
        "step",
        "tls",
    )
    __deletable__ = ("_s",)  # detach(): a closed session is freed without the cycle collector

    def __init__(self, session: Session, peer: tuple[str, int] | None) -> None:
        self._s = session
        self.peer = peer  # the client's address, for XCLIENT
        self.state = Upstream.CONNECTING
        self.greeted = False  # the client has seen a greeting
        self.tls = False  # the upstream connection is encrypted
        self._partial = bytearray()  # a reply line not complete yet
        self._assembler = ReplyAssembler()
        self._plan: list[Step] = []  # a few steps: 570 bytes less than a deque
        self.step: Step | None = None  # the gateway's own command whose reply is awaited
        self._then: Then | None = None
        self._fallback: Reply | None = None  # the EHLO reply if TLS cannot start

    def detach(self) -> None:
        """The session has closed: drop the reference back to it."""
        del self._s
        self._then = None

    # -- state -------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.state is not Upstream.DOWN

    def move(self, trigger: Link) -> None:
        self.state = NEXT_UPSTREAM[trigger][self.state]  # UPSTREAM: the one way it changes

    # -- framing -------------------------------------------------------------------
    def feed(self, data: bytes, now: float) -> None:
        """Frame replies from ``data`` and hand each to the session, in order, while
        the connection lives. A line that is not a reply fails the upstream."""
        partial = self._partial
        if partial:
            partial += data
            if 0x0A not in data:  # a byte's value: see grammar.check_line_bytes
                if len(partial) > REPLY_LINE_LIMIT:
                    self.failed("reply line too long", now)
                return
            data = bytes(partial)
            partial.clear()
        start, end = 0, len(data)
        while start < end and self.state is not Upstream.DOWN:
            nl = data.find(b"\n", start)
            if nl < 0:
                partial += data[start:]
                if len(partial) > REPLY_LINE_LIMIT:
                    self.failed("reply line too long", now)
                return
            line = data if start == 0 and nl + 1 == end else data[start : nl + 1]
            start = nl + 1
            try:
                reply = self._assembler.add(frame_reply_line(line))
            except LineError as exc:
                self.failed(exc.reason, now)
                return
            if reply is not None:
                self._s.on_reply(reply, now)

    # -- greeting and handshake -------------------------------------------------------
    def connected(self, now: float) -> None:
        if self.state is Upstream.CONNECTING:
            self.move(Link.CONNECTED)
            self._s.deadlines.server = now + self._s.policy.timeouts.greeting

    def on_greeting(self, reply: Reply, now: float) -> None:
        s = self._s
        if not self.greeted:
            self.greeted = True
            s.deadlines.server = None
            s.out.to_client(greeting(reply, s.policy))
            if reply.code != 220:  # 554 & co: the server's decision, relayed
                self.move(Link.REFUSED)
                if reply.code == 421:
                    s.closing = True
                    s.finish_if_done()
                return
        elif reply.code != 220:
            self.reconnect_failed(f"greeting {reply.code} on reconnect")
            return
        self.move(Link.GREETED)
        plan = self._plan
        plan.clear()
        if s.policy.xclient and self.peer is not None:
            plan += (Step.XCLIENT_EHLO, Step.XCLIENT)
        if s.helo is not None:
            plan.append(Step.REPLAY)
        self._advance(now)

    def _advance(self, now: float) -> None:
        """Send the next step's command, or finish the handshake."""
        s = self._s
        if not self._plan:
            self.step = None
            self.move(Link.READY)
            s.deadlines.server = None
            return
        step = self.step = self._plan.pop(0)
        if step is Step.XCLIENT_EHLO:
            line = f"EHLO {s.policy.hostname}\r\n".encode()
        elif step is Step.XCLIENT:
            assert self.peer is not None
            line = xclient_line(self.peer)
        elif step is Step.REPLAY:
            assert s.helo is not None
            line = s.helo
        elif step is Step.STARTTLS:
            line = b"STARTTLS\r\n"
        else:
            line = s.ehlo_line or f"EHLO {s.policy.hostname}\r\n".encode()
        s.deadlines.server = now + s.policy.timeouts.command
        verb = line.split(b" ", 1)[0].rstrip(b"\r\n").decode("ascii", "replace").upper()
        s.out.to_server(line, verb)

    def on_step_reply(self, reply: Reply, now: float) -> None:
        """The reply to the gateway's own command (``step`` is set)."""
        s = self._s
        step = self.step
        self.step = None
        if step is Step.XCLIENT_EHLO:
            if reply.code != 250 or "XCLIENT" not in ehlo_keywords(reply):
                why = "mail server does not offer XCLIENT to the gateway"
                if not self._xclient_failed("SG-XCLIENT-UNAVAILABLE", why):
                    return
                self._plan.remove(Step.XCLIENT)
        elif step is Step.XCLIENT:
            # Postfix answers XCLIENT with a fresh 220 greeting, older Postfix and
            # smtp-sink with 250: any 2xx took the attributes.
            why = f"XCLIENT refused: {reply.code}"
            accepted = 200 <= reply.code < 300
            if not accepted and not self._xclient_failed("SG-XCLIENT-FAILED", why):
                return
        elif step is Step.REPLAY:
            if not reply.positive:
                self.reconnect_failed("replayed HELO/EHLO refused")
                return
            self._plan_tls(reply, None)
        elif step is Step.STARTTLS:
            if reply.code == 220:
                s.deadlines.server = now + s.policy.timeouts.command
                s.out.emit(StartTls(Side.SERVER))
                return  # the handshake; then tls_started() sends the EHLO
            s.out.event("SG-TLS-UPSTREAM-FAILED", f"server refused STARTTLS: {reply.code}")
            self._plan.clear()
            fallback = self._fallback
            assert fallback is not None
            self._secured(fallback, now)
            return
        elif step is Step.TLS_EHLO:
            self._secured(reply, now)
            return
        self._advance(now)

    def _xclient_failed(self, event_id: str, why: str) -> bool:
        """The server will not take the client's address. Carry on (True) only with
        ``xclient_fail_open``: the server then sees the gateway's own address, which
        a Postfix ``mynetworks`` trusts to relay. By default refuse the client."""
        s = self._s
        if s.policy.xclient_fail_open:
            s.out.event(event_id, f"{why}; the server sees the gateway's address")
            return True
        s.out.event(event_id, f"{why}; client refused", "drop-connection")
        s.out.emit(CloseServer(abort=True))
        self._plan.clear()
        if self.state is not Upstream.DOWN:
            self.move(Link.LOST)
        s.deadlines.server = None
        s.abort_with(XCLIENT_REFUSED)
        return False

    def secure_first(self, ehlo: Reply, then: Then, now: float) -> bool:
        """Terminate mode, the client's EHLO answered: if the server offers STARTTLS,
        secure the upstream before the client sees the reply; ``then`` gets the EHLO
        reply after TLS (or this one, if TLS cannot start). False: nothing to do."""
        if not self._plan_tls(ehlo, then):
            return False
        self.move(Link.SECURE)
        self._advance(now)
        return True

    def _plan_tls(self, ehlo: Reply, then: Then | None) -> bool:
        if (
            self._s.policy.starttls is not StartTlsPolicy.TERMINATE
            or self.tls
            or ehlo.code != 250
            or "STARTTLS" not in ehlo_keywords(ehlo)
        ):
            return False
        self._plan[:0] = (Step.STARTTLS, Step.TLS_EHLO)
        self._then = then
        self._fallback = ehlo
        return True

    def tls_started(self, now: float) -> None:
        if not self._plan or self._plan[0] is not Step.TLS_EHLO:
            return  # no handshake was asked for (a late or stray event): nothing to do
        self.tls = True
        self._advance(now)  # TLS_EHLO: RFC 3207 §4.2, start over

    def _secured(self, reply: Reply, now: float) -> None:
        then, self._then = self._then, None
        if then is not None:
            then(reply, now)
        else:
            self._advance(now)

    # -- loss and reconnect ------------------------------------------------------------
    def reconnect(self, now: float) -> None:
        """Drop this connection (if any) and open a fresh one, in clear."""
        s = self._s
        if self.state is not Upstream.DOWN:
            s.out.emit(CloseServer(abort=True))
        self._partial.clear()
        self._assembler = ReplyAssembler()
        self._plan.clear()
        self.step = None
        self._then = None
        self.tls = False
        self.move(Link.RECONNECT)
        s.deadlines.server = now + s.policy.timeouts.connect
        s.out.emit(OpenServer())

    def reconnect_failed(self, why: str) -> None:
        s = self._s
        s.out.event("SG-UPSTREAM-RECONNECT-FAILED", why)
        s.out.emit(CloseServer(abort=True))
        if self.state is not Upstream.DOWN:
            self.move(Link.LOST)
        s.abort_with(replies.SERVICE_UNAVAILABLE)

    def failed(self, why: str, now: float) -> None:
        """The upstream misbehaved: drop it and handle it like a lost connection."""
        s = self._s
        s.out.event("SG-UPSTREAM-ERROR", f"mail server connection dropped: {why}")
        s.out.emit(CloseServer(abort=True))
        s.upstream_lost(now)

    def abort(self) -> None:
        """Close now, without the terminator (the server discards a partial message)."""
        if self.state is not Upstream.DOWN:
            self._s.out.emit(CloseServer(abort=True))
            self.move(Link.LOST)
        self._s.deadlines.server = None
