"""Shared state of an inspector session and the primitives every part uses.

:class:`SessionBase` declares the session's state and the small operations on it
(owing a reply, flushing replies in order, closing, emitting actions, computing the
next deadline). The protocol logic lives in mixins, one concern each:
``relay`` (the DATA phase), ``envelope`` (MAIL/RCPT checks), ``upstream`` (the
server connection's life cycle) and ``session`` (framing and dispatch).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from smtpguard.core.actions import (
    Action,
    CloseClient,
    CloseServer,
    Direction,
    OpenServer,
    PolicyEvent,
    SetTimer,
    StartTls,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.checks import Finding
from smtpguard.core.data import DataScanner, Normalizer
from smtpguard.core.dedupe import Tracker
from smtpguard.core.grammar import Reply, ReplyAssembler
from smtpguard.core.message import MessageInspector
from smtpguard.core.policy import Policy


class Phase(enum.Enum):
    COMMAND = "command"  # framing command lines
    WAIT = "wait"  # DATA or AUTH forwarded: client bytes held until the server answers
    AUTH = "auth"  # server sent 334: the next client line is an AUTH response
    DATA = "data"  # relaying message data
    BDAT = "bdat"  # draining a refused BDAT chunk
    QUIT = "quit"  # QUIT forwarded: nothing more is read
    TLS = "tls"  # a TLS handshake with the client is under way: nothing is read
    TUNNEL = "tunnel"  # STARTTLS passthrough: bytes relayed, no longer inspected
    CLOSED = "closed"


class Upstream(enum.Enum):
    CONNECTING = "connecting"
    GREETING = "greeting"  # connected, waiting for the 220
    HANDSHAKE = "handshake"  # the gateway's own exchanges: XCLIENT, STARTTLS, replay
    READY = "ready"
    DOWN = "down"


# Which phase a server reply to a held command leads to: (verb, reply class) -> phase.
AFTER_REPLY: dict[tuple[str, int], Phase] = {
    ("DATA", 3): Phase.DATA,
    ("AUTH", 3): Phase.AUTH,
    ("STARTTLS", 2): Phase.TUNNEL,  # passthrough: the client and server go TLS
}

CLIENT_TURN = frozenset({Phase.COMMAND, Phase.DATA, Phase.AUTH, Phase.BDAT})

# Client input is held after these until the server answers: DATA and AUTH change
# how the next bytes are read; HELO/EHLO decide which extensions (and so which
# MAIL parameters) the client may use, and RFC 2920 §3.1 makes them end a group.
HOLD_VERBS = frozenset({"DATA", "AUTH", "EHLO", "HELO", "STARTTLS"})

END_OF_DATA_VERB = "."  # slot name for the final reply to a message
# Verbs counted by name in the per-session counters (others count as "OTHER").
KNOWN_VERBS = frozenset(
    {
        "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
        "HELP", "ETRN", "AUTH", "STARTTLS", "BDAT", "TURN", "ATRN", "XCLIENT", "XFORWARD",
        "XEXCH50", "SEND", "SOML", "SAML",
    }
)  # fmt: skip
TLS_SLOT = "+STARTTLS"  # the gateway's own 220 to STARTTLS (terminate mode)


class Slot:
    """A reply position in the pipeline. ``reply`` is None until known."""

    __slots__ = ("raw", "reply", "verb")

    def __init__(self, verb: str, raw: bytes = b"", reply: bytes | None = None) -> None:
        self.verb = verb
        self.raw = raw
        self.reply = reply


Handler = Callable[[Reply, float], None]  # receives the reply to an internal command


class SessionBase:
    """State and primitives shared by the session's parts.

    The parts form one chain, a concern each: ``SessionBase`` → ``UpstreamLink``
    (upstream.py) → ``EnvelopeChecks`` (envelope.py) → ``DataPhase`` (relay.py) →
    ``Session`` (session.py). Single inheritance, because mypyc, which compiles the
    core, supports no other.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        trace: bool = False,
        peer: tuple[str, int] | None = None,
        client_tls: bool = False,
    ) -> None:
        self.policy = policy
        self.trace = trace
        self._peer = peer  # the client's address, for XCLIENT
        self.client_tls = client_tls  # the client side is encrypted (STARTTLS or 465)
        self.server_tls = False
        self._handlers: deque[Handler] = deque()  # replies owed to internal commands
        self._tls_then: Handler | None = None
        self._tls_fallback: Reply | None = None
        self._ehlo_line: bytes | None = None  # the client's EHLO, re-sent after TLS
        self._emulation = policy.emulation
        line_check = policy.checks.command_line_length
        # A disabled check still keeps a hard cap: the buffer must stay bounded.
        self._line_limit = line_check.limit if line_check.limit is not None else 4096
        self.phase = Phase.COMMAND
        self.upstream = Upstream.CONNECTING
        self._out: list[Action] = []
        self._cbuf = bytearray()  # client bytes not yet framed
        self._csearch = 0  # where the LF search in _cbuf resumes
        self._sbuf = bytearray()  # a partial reply line
        self._assembler = ReplyAssembler()
        self._slots: deque[Slot] = deque()  # all replies owed to the client, in order
        self._awaiting: deque[Slot] = deque()  # the subset waiting for the server
        self._greeted = False
        self._helo: bytes | None = None  # last HELO/EHLO the server accepted
        self._scanner: DataScanner | None = None
        self._refusal: bytes | None = None  # reply owed at end of a dropped message
        self._held_cr = False  # a chunk ended in CR that is not relayed yet
        self._normalizer: Normalizer | None = None  # smuggling = normalize, in DATA
        self._inspector: MessageInspector | None = None
        self._shown: frozenset[str] = frozenset()  # EHLO keywords the client was shown
        self._rcpt_count = 0  # RCPT commands in this transaction
        self._invalid_rcpts = 0  # RCPTs the server refused with 5xx, this session
        self._rcpt_blocked = False
        self._rates: dict[str, tuple[float, int]] = {}  # rate-limited checks
        # Duplicate suppression: the transaction's key material; the final reply whose
        # dot is held while the driver looks the key up.
        self._dedupe = Tracker() if policy.dedupe else None
        self._dedupe_slot: Slot | None = None
        self._bdat_left = 0
        self._bad_lines = 0  # client lines refused for a bare CR, bare LF or NUL
        self._skip_line = False  # discarding the rest of an over-long command line
        self._closing = False  # close once every owed reply is flushed
        self._client_eof = False
        self._draining = False
        self._in_transaction = False
        self._need_hello = False  # TLS started: only a new EHLO/HELO opens the session
        self._client_deadline: float | None = None
        self._server_deadline: float | None = None
        self._timer: float | None = None
        # Counters for metrics and tests, read by the driver when the session ends.
        self.messages_relayed = 0
        self.messages_refused = 0
        self.commands_refused = 0
        self.message_octets = 0  # message data received from the client
        self.commands: dict[tuple[str, str], int] = {}  # (verb, "forwarded"|"refused")

    def _count(self, verb: str, outcome: str) -> None:
        """Per-verb counters for metrics. Keys are bounded by configuration, not by
        the client: a verb that is neither allowed nor a known SMTP verb counts as
        ``OTHER``."""
        if verb not in self.policy.allowed_verbs and verb not in KNOWN_VERBS:
            verb = "OTHER"
        key = (verb, outcome)
        self.commands[key] = self.commands.get(key, 0) + 1

    def _local_reply(self, verb: str, reply: bytes) -> None:
        if verb and verb != END_OF_DATA_VERB:
            self._count(verb, "refused")
        self._slots.append(Slot(verb, reply=reply))
        self._flush()

    def _close_after(self, reply: bytes) -> None:
        """Owe ``reply`` after every earlier reply, read nothing more, then close."""
        self._slots.append(Slot("", reply=reply))
        self._closing = True
        self._flush()

    def _abort_with(self, reply: bytes | None) -> None:
        """Answer the first unanswered slot with ``reply`` (or nothing), drop the
        rest, and close once everything before it is flushed."""
        kept: deque[Slot] = deque()
        for slot in self._slots:
            if slot.reply is None:
                break
            kept.append(slot)
        if reply is not None:
            kept.append(Slot("", reply=reply))
        self._slots = kept
        self._awaiting.clear()
        self._closing = True
        self._flush()

    def _flush(self) -> None:
        slots = self._slots
        while slots and slots[0].reply is not None:
            slot = slots.popleft()
            assert slot.reply is not None
            self._send_client(slot.reply)
            self._client_deadline = None  # the client's turn starts now
            if slot.verb == TLS_SLOT:
                self._drop_injected()
                self._emit(StartTls("client"))
        self._finish_if_done()

    def _drop_injected(self) -> None:
        """Bytes the client sent after STARTTLS but before TLS are plaintext
        injected into the encrypted session (CVE-2011-0411 class): discard them."""
        if self._cbuf:
            self._policy_event(
                "SG-TLS-INJECTION",
                f"{len(self._cbuf)} octets pipelined after STARTTLS discarded",
                "reject",
            )
            self._cbuf.clear()
            self._csearch = 0

    def _finish_if_done(self) -> None:
        if self.phase is Phase.CLOSED or self._slots:
            return
        # After EOF, finish once nothing owed remains and nothing that arrived before
        # the EOF can still be processed: no complete command, no message bytes.
        eof_done = (
            self._client_eof
            and self.phase is not Phase.WAIT
            and (not self._cbuf if self.phase is Phase.DATA else b"\r\n" not in self._cbuf)
        )
        if self._closing or eof_done:
            if self.upstream is not Upstream.DOWN:
                # Mid-message the server must not take what it has as a message.
                self._emit(CloseServer(abort=self.phase is Phase.DATA))
                self.upstream = Upstream.DOWN
            self._emit(CloseClient())
            self.phase = Phase.CLOSED

    def _send_client(self, raw: bytes) -> None:
        self._emit(ToClient(raw))
        if self.trace:
            self._trace_reply(Direction.GW_TO_CLIENT, raw)

    def _to_server(self, line: bytes, verb: str) -> None:
        self._emit(ToServer(line))
        if self.trace:
            text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            self._emit(
                Trace(Direction.GW_TO_SERVER, "AUTH ..." if verb == "AUTH" else text, verb=verb)
            )

    def _trace_reply(self, direction: Direction, raw: bytes) -> None:
        if not self.trace:
            return
        for line in raw.splitlines():
            text = line.decode("utf-8", "surrogateescape")
            code = int(text[:3]) if text[:3].isdigit() else None
            self._emit(Trace(direction, text, code=code))

    def _policy_event(self, event_id: str, message: str, action: str = "log") -> None:
        self._emit(PolicyEvent(event_id, message, action))

    def _upstream_live(self) -> bool:
        return self.upstream is not Upstream.DOWN

    def _client_idle(self) -> bool:
        """True when the gateway is waiting for the client (its idle timeout runs)."""
        return not self._slots and self.phase in CLIENT_TURN

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _within_rate(self, f: Finding, now: float) -> bool:
        start, count = self._rates.get(f.check, (now, 0))
        if now - start >= f.period:
            start, count = now, 0
        self._rates[f.check] = (start, count + 1)
        return count < f.rate

    def _reset_both(self) -> None:
        self._emit(CloseServer(abort=True))
        self._emit(CloseClient(reset=True))
        self.upstream = Upstream.DOWN
        self.phase = Phase.CLOSED
        self._slots.clear()
        self._awaiting.clear()

    def _reconnect(self, now: float) -> None:
        if self.upstream is not Upstream.DOWN:
            self._emit(CloseServer(abort=True))
        self._sbuf.clear()
        self._assembler = ReplyAssembler()
        self._handlers.clear()  # nothing owed by the old connection carries over
        self._tls_then = None
        self.server_tls = False  # a new connection starts in clear (TLS again if offered)
        self.upstream = Upstream.CONNECTING
        self._server_deadline = now + self.policy.timeouts.connect
        self._emit(OpenServer())

    def _finish(self, now: float) -> list[Action]:
        deadline = None
        if self.phase is not Phase.CLOSED:
            deadline = self._server_deadline
            if (not self._slots and self.phase in CLIENT_TURN) or self.phase is Phase.TUNNEL:
                client = self._client_deadline
                if client is None:
                    client = self._client_deadline = now + self.policy.timeouts.client_idle
                if deadline is None or client < deadline:
                    deadline = client
        # Deadlines mostly move later (each command pushes the idle timeout), so the
        # armed timer is only moved earlier; when it fires early, timer() re-arms it.
        if deadline is not None and (self._timer is None or deadline < self._timer):
            self._timer = deadline
            self._out.append(SetTimer(deadline))
        out, self._out = self._out, []
        return out
