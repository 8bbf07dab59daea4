"""The client's command lines: framing, the verb policy, envelope checks, and what
each verb does before it reaches the server.

Each command gets a slot in the reply pipeline: a forwarded command's slot is filled
by the server's next reply, a refused command's slot at once with the gateway's
reply. After DATA, AUTH, HELO, EHLO and STARTTLS (and every command in PIX
emulation) the client's bytes are held until the server answers, so the gateway
reads them the way the server will: message data after a 354, commands after a
refusal (RFC 2920 §3.1 makes them end a pipelined group anyway).

The part knows nothing of the session. It is fed the policy, the action list, the
client's receive buffer, the reply pipeline, the deadlines, the envelope and the
rate tables; it relays into the action list and fills reply slots, and returns what
the session must do next: a :class:`Then` (send the filled replies, move the phase
by a trigger, reset both sides) or a :class:`Close` (say this, then close). It keeps
the per-verb counters and what the client may send (``hello``, ``shown``).
"""

from __future__ import annotations

import enum
from typing import Final

from smtpguard.core import replies
from smtpguard.core.actions import Direction, Trace
from smtpguard.core.banner import pix_rewrite
from smtpguard.core.buffer import LineTooLong, ReceiveBuffer
from smtpguard.core.checks import Finding, Rates, check_mail, check_rcpt, finding, over
from smtpguard.core.deadlines import Deadlines, reply_timeout
from smtpguard.core.ehlo import parameter_refused_reply, refused_parameter
from smtpguard.core.grammar import ascii_number, check_line_bytes, parse_command
from smtpguard.core.output import Output
from smtpguard.core.phases import Frame, Framing, Hello, framing
from smtpguard.core.pipeline import (
    END_OF_DATA_VERB,
    TLS_SLOT,
    ReplyPipeline,
    Slot,
)
from smtpguard.core.policy import Policy, Verdict
from smtpguard.core.policy import StartTls as StartTlsPolicy
from smtpguard.core.ratelimit import SharedRates

# Client input is held after these until the server answers: DATA and AUTH change
# how the next bytes are read; HELO/EHLO decide which extensions (and so which MAIL
# parameters) the client may use.
HOLD_VERBS: Final = frozenset({"DATA", "AUTH", "EHLO", "HELO", "STARTTLS"})
# What a client may send before its new EHLO/HELO once TLS has started (RFC 3207 §4.2).
HELLO_FREE_VERBS: Final = frozenset({"EHLO", "HELO", "NOOP", "RSET", "QUIT"})
# Verbs counted by name in the per-session counters (others count as "OTHER").
KNOWN_VERBS: Final = frozenset(
    {
        "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
        "HELP", "ETRN", "AUTH", "STARTTLS", "BDAT", "TURN", "ATRN", "XCLIENT", "XFORWARD",
        "XEXCH50", "SEND", "SOML", "SAML",
    }
)  # fmt: skip
# No EHLO keyword shown yet: one shared value (each frozenset() is a new 216 bytes).
NOTHING_SHOWN: Final[frozenset[str]] = frozenset()


class Then(enum.Enum):
    """What the session does after the part handled a line (it applies it)."""

    NOTHING = "nothing: forwarded, the client's next line may follow"
    FLUSH = "a reply slot was filled: send the replies that are ready"
    HOLD = "held command forwarded: trigger HOLD"
    QUIT = "QUIT forwarded: trigger QUIT"
    BDAT = "BDAT refused: trigger BDAT, its chunk is drained"
    TLS_OFFERED = "the gateway's 220 to STARTTLS owed: trigger TLS_OFFERED, send"
    AUTH_LINE = "AUTH response forwarded: trigger AUTH_LINE"
    RATE_HOLD = "held for a shared rate-limit count: trigger RATE_HOLD"
    RATE_AFTER = "counted after a server reply: between commands, trigger RATE_HOLD"
    RESET = "reset both connections"


class Close:
    """Owe ``reply`` after every earlier reply and close (``abort``: answer the first
    unanswered slot with it and drop the rest; decided on a server reply)."""

    __slots__ = ("abort", "reply")

    def __init__(self, reply: bytes, abort: bool = False) -> None:
        self.reply: Final = reply
        self.abort: Final = abort


class Envelope:
    """The transaction as the gateway sees it, and the session's RCPT refusals."""

    __slots__ = ("in_transaction", "invalid_rcpts", "rcpt_blocked", "rcpt_count")

    def __init__(self) -> None:
        self.in_transaction = False  # a MAIL was accepted and no end/RSET since
        self.rcpt_count = 0  # RCPT commands in this transaction
        self.invalid_rcpts = 0  # RCPTs the server refused with 5xx, this session
        self.rcpt_blocked = False  # too many of those: every RCPT is refused

    def reset(self) -> None:
        self.in_transaction = False
        self.rcpt_count = 0


class Commands:
    """Frames and handles client command lines for one session."""

    __slots__ = (
        "_buffer", "_counts", "_deadlines", "_out", "_policy", "_rates", "_replies",
        "_shared", "bad_lines", "bdat_left", "client_tls", "envelope", "framing", "hello",
        "line_limit", "refused", "shown",
    )  # fmt: skip

    def __init__(
        self,
        policy: Policy,
        out: Output,
        buffer: ReceiveBuffer,
        pipeline: ReplyPipeline,
        deadlines: Deadlines,
        rates: Rates,
        shared: SharedRates | None,
        client_tls: bool,
    ) -> None:
        self._policy = policy
        self._out = out
        self._buffer = buffer
        self._replies = pipeline
        self._deadlines = deadlines
        self._rates = rates  # rate limits counted in the session
        self._shared = shared  # rate limits counted in a shared store
        self.envelope = Envelope()
        line_check = policy.checks.command_line_length
        # A disabled check still keeps a hard cap: the buffer must stay bounded.
        self.line_limit = line_check.limit if line_check.limit is not None else 4096
        self.client_tls = client_tls  # the client side is encrypted (STARTTLS or 465)
        self.shown: frozenset[str] = NOTHING_SHOWN  # EHLO keywords the client was shown
        self.hello = Hello.ANY  # the HELLO table: EHLO/HELO first after TLS
        self.framing = Framing.LINES  # the FRAMING table: a line, or the rest of one
        self.bad_lines = 0  # client lines refused for a bare CR, bare LF or NUL
        self.bdat_left = 0
        self.refused = 0  # commands refused, for metrics
        # (verb, "forwarded"|"refused"): made at the first count (an idle session has
        # none; an empty dict is 64 bytes of every idle session).
        self._counts: dict[tuple[str, str], int] | None = None

    # -- counters ------------------------------------------------------------------
    def count(self, verb: str, outcome: str) -> None:
        """Per-verb counters for metrics, keyed by configuration, not by the client: a
        verb neither allowed nor a known SMTP verb counts as ``OTHER``. ``outcome``:
        ``forwarded``, ``refused``, or ``accepted`` (answered with success by the
        gateway itself: STARTTLS it terminates)."""
        if verb not in self._policy.allowed_verbs and verb not in KNOWN_VERBS:
            verb = "OTHER"
        key = (verb, outcome)
        counts = self._counts
        if counts is None:
            counts = self._counts = {}
        counts[key] = counts.get(key, 0) + 1

    def counts(self) -> dict[tuple[str, str], int]:
        """Commands counted so far, by (verb, "forwarded"|"refused"|"accepted"); a copy."""
        return dict(self._counts) if self._counts else {}

    def _local(self, verb: str, reply: bytes) -> Then:
        """The gateway answers the command itself, in its place in the order."""
        if verb and verb != END_OF_DATA_VERB:
            self.count(verb, "refused")
        self._replies.local(verb, reply)
        return Then.FLUSH

    # -- framing -------------------------------------------------------------------
    def next_line(self) -> bytes | Then | Close | None:
        """The next complete command line, acting on over-long ones on the way: None
        until one is complete; ``Then.FLUSH`` when the rest of an over-long line was
        skipped and answered (send it, then ask again); ``Then.RESET`` or a
        :class:`Close` when the over-long line ends the session."""
        buf = self._buffer
        if self.framing is Framing.SKIPPING:
            if not buf.skip():
                return None
            self.framing = framing(self.framing, Frame.LINE_END)
            return self._local("", replies.LINE_TOO_LONG)
        while True:
            try:
                return buf.next_line(self.line_limit)
            except LineTooLong:
                stop = self._line_too_long()
                if stop is not None:
                    return stop
                if not buf.skip():
                    return None
                self.framing = framing(self.framing, Frame.LINE_END)
                return self._local("", replies.LINE_TOO_LONG)

    def _line_too_long(self) -> Then | Close | None:
        """Act on an over-long command line; None if the rest of it is to be skipped."""
        limit = self.line_limit
        verdict = self._policy.checks.command_line_length.action
        self._out.event("SG-CMD-TOO-LONG", f"command line over {limit} octets", verdict.value)
        self.refused += 1
        if verdict is Verdict.REJECT:
            self.framing = framing(self.framing, Frame.TOO_LONG)
            return None
        if verdict is Verdict.RESET:
            return Then.RESET
        return Close(replies.line_too_long_drop(limit))

    def command(self, line: bytes, now: float) -> Then | Close:
        out = self._out
        body = line[:-2]  # framed on CRLF: any other CR or LF is inside the line
        bad = check_line_bytes(body)
        cmd = parse_command(line) if bad is None else None
        if out.client:
            text = body.rstrip(b"\n").decode("utf-8", "surrogateescape")
            verb = cmd.verb if cmd else None
            if verb == "AUTH":
                text = "AUTH " + cmd.args.split(" ")[0] if cmd else text  # no credentials
            out.emit(Trace(Direction.CLIENT_TO_GW, text, verb=verb))
        if bad is not None:
            closing = self.bad_line(bad, "command line")
            return closing or self._local("", replies.bad_command_bytes(bad))
        if cmd is None:
            self.refused += 1
            return self._local("", replies.SYNTAX)
        verb = cmd.verb
        policy = self._policy
        if verb == "BDAT":
            return self._refuse_bdat(cmd.args)
        if verb == "STARTTLS" and policy.starttls is not StartTlsPolicy.STRIP:
            return self._starttls(line, now)
        if verb not in policy.allowed_verbs and policy.emulation.pix:
            # PIX 6.x Mailguard (lab emulation): the verb is overwritten in place and
            # the server answers the mangled command itself.
            out.event("SG-EMULATE-REWRITE", f"{verb} rewritten (PIX emulation)", "log")
            return self.forward(verb, pix_rewrite(line, policy.emulation.rewrite), now)
        if verb not in policy.allowed_verbs:
            out.event(
                "SG-CMD-BLOCKED",
                f"{verb} refused: not allowed in {policy.mode.value} mode",
                "reject",
            )
            self.refused += 1
            return self._local(verb, replies.UNRECOGNIZED)
        if self.hello is Hello.FIRST and verb not in HELLO_FREE_VERBS:
            self.refused += 1
            return self._local(verb, replies.SEND_HELLO_FIRST)
        if verb == "MAIL" or verb == "RCPT":
            refused = self._envelope_refused(verb, cmd.args, line, now)
            if refused is not None:
                return refused
        return self.forward(verb, line, now)

    def forward(self, verb: str, line: bytes, now: float, slot: Slot | None = None) -> Then:
        """Relay a command; ``slot``: the reply slot it took while it was held."""
        self.count(verb, "forwarded")
        if slot is None:
            self._replies.forwarded(verb, line)
        else:
            slot.raw = line
            self._replies.expect(slot)
        deadlines = self._deadlines
        if deadlines.server is None:
            deadlines.server = now + reply_timeout(self._policy.timeouts, verb)
        self._out.to_server(line, verb)
        if verb in HOLD_VERBS or self._policy.emulation.pix:  # PIX: lock-step
            return Then.HOLD
        if verb == "QUIT":
            return Then.QUIT
        if verb == "RSET":
            self.envelope.reset()
        return Then.NOTHING

    def bad_line(self, bad: str, what: str) -> Close | None:
        """A client line with a bare CR, bare LF or NUL: refused whole. A client that
        keeps sending them is dropped (Postfix ``smtpd_forbid_bare_newline`` drops at
        the first): the :class:`Close` then."""
        self.refused += 1
        self.bad_lines += 1
        if self.bad_lines >= self._policy.bad_line_limit:
            self._out.event("SG-CMD-BAD-BYTES", f"{bad} in {what}: closing", "drop-connection")
            return Close(replies.bad_lines_drop(bad))
        self._out.event("SG-CMD-BAD-BYTES", f"{bad} in {what}", "reject")
        return None

    # -- AUTH, STARTTLS, BDAT ---------------------------------------------------------
    def auth_response(self, line: bytes, now: float) -> Then | Close:
        """A SASL response line (RFC 4954 §4): relayed, never parsed or logged; but
        framed like every client line, so a bare CR, bare LF or NUL never reaches the
        server. Such a line is replaced by ``*``, which cancels the exchange (§4), and
        the client gets the gateway's 501 once the server has answered the ``*``."""
        out = self._out
        if out.client:
            out.emit(Trace(Direction.CLIENT_TO_GW, "(AUTH response)"))
        bad = check_line_bytes(line[:-2])
        if bad is None:
            self._replies.forwarded("AUTH", line)
            out.to_server(line, "AUTH")
            return Then.AUTH_LINE
        closing = self.bad_line(bad, "AUTH response")
        if closing is not None:
            return closing
        # The owed reply remembers why: the session answers the client with the
        # gateway's 501 once the server has answered the "*".
        self._replies.forwarded("AUTH", b"*\r\n").cancelled = bad
        self._deadlines.server = now + self._policy.timeouts.command
        out.to_server(b"*\r\n", "AUTH")
        return Then.AUTH_LINE

    def _starttls(self, line: bytes, now: float) -> Then:
        if self.client_tls:
            return self._local("STARTTLS", replies.TLS_ACTIVE)
        if self._policy.starttls is StartTlsPolicy.TERMINATE:
            # Answered by the gateway; the handshake starts once the 220 is written.
            self.count("STARTTLS", "accepted")
            self._replies.local(TLS_SLOT, replies.TLS_READY)
            return Then.TLS_OFFERED
        return self.forward("STARTTLS", line, now)

    def _refuse_bdat(self, args: str) -> Then | Close:
        """BDAT is never relayed; its chunk is drained unparsed (RFC 3030 §2)."""
        self.refused += 1
        size = ascii_number(args.split(" ")[0]) if args else -1
        if size < 0 or size > self._policy.bdat_drain_limit:
            self._out.event("SG-BDAT-REFUSED", "BDAT with unusable size: closing", "drop")
            return Close(replies.bdat_too_large())
        self._out.event("SG-BDAT-REFUSED", f"BDAT chunk of {size} octets drained", "reject")
        self.bdat_left = size
        return Then.BDAT

    def drain_bdat(self) -> bool:
        """Drain the refused chunk; True once drained, its refusal owed (the session
        triggers BDAT_DRAINED and sends it)."""
        self.bdat_left -= len(self._buffer.take(self.bdat_left))
        if self.bdat_left:
            return False
        self._local("BDAT", replies.BDAT_REFUSED)
        return True

    # -- MAIL and RCPT ---------------------------------------------------------------
    def _envelope_refused(
        self, verb: str, args: str, line: bytes, now: float
    ) -> Then | Close | None:
        """Run the MAIL/RCPT checks; None when the command goes on to the server, else
        what the session does instead (``Then.RATE_HOLD``: a shared rate limit holds it
        for its count, core/ratelimit.py)."""
        env = self.envelope
        checks = self._policy.checks
        sender = None
        if verb == "MAIL":
            env.rcpt_count = 0
            found, sender, params = check_mail(args, checks)
        else:
            if env.rcpt_blocked:
                return self._local(verb, replies.TOO_MANY_INVALID)
            env.rcpt_count += 1
            found, params = check_rcpt(args, checks, env.rcpt_count)
        if found is not None:
            shared = self._shared
            if found.verdict is Verdict.RATE_LIMIT and shared is not None:
                slot = self._replies.pending(verb)
                self._out.emit_any(shared.hold_command(found, slot, verb, line, params, sender))
                return Then.RATE_HOLD
            enforced = self.enforce(found, verb, now)
            if enforced is not None:
                return enforced
        return self.params_refused(verb, params)

    def params_refused(self, verb: str, params: str, slot: Slot | None = None) -> Then | None:
        """Refuse a MAIL/RCPT parameter of an extension the client was not shown
        (``Then.FLUSH``; None: nothing refused); ``slot``: the reply slot of a
        command that was held."""
        param = refused_parameter(verb, params, self.shown) if params else None
        if param is None:
            return None
        self._out.event(
            "SG-ESMTP-PARAM", f"{verb} parameter {param} of an extension not offered", "reject"
        )
        if slot is None:
            return self._local(verb, parameter_refused_reply(param))
        self.count(verb, "refused")
        slot.reply = parameter_refused_reply(param)
        return Then.FLUSH

    def invalid_rcpt(self, now: float) -> Then | Close | None:
        """The server refused a RCPT with 5xx: the session's count, and its check."""
        env = self.envelope
        env.invalid_rcpts += 1
        check = self._policy.checks.invalid_recipients
        if not over(check, env.invalid_rcpts):
            return None
        f = finding(
            "invalid_recipients",
            "SG-CHK-INVALID-RECIPIENTS",
            f"{env.invalid_rcpts} recipients refused by the server (limit {check.limit})",
            check,
            550,
            "5.7.1 Too many invalid recipients",
        )
        return self.enforce(f, "RCPT", now, after=True)

    def enforce(
        self, f: Finding, verb: str, now: float, after: bool = False
    ) -> Then | Close | None:
        """Apply a command finding's verdict; None when the command goes on (logged).
        ``after``: the command was already relayed (a check on the server's reply)."""
        verdict = f.verdict
        if verdict is Verdict.RATE_LIMIT:
            shared = self._shared
            if after and shared is not None:
                self._out.emit_any(shared.count_after(f))  # decided when the store answers
                return Then.RATE_AFTER
            verdict = Verdict.LOG if self._rates.allow(f, now) else Verdict.REJECT
        self._out.event(f.event_id, f.message, verdict.value)
        if verdict is Verdict.LOG:
            return None
        self.refused += 1
        if verdict is Verdict.REJECT:
            if after:
                self.envelope.rcpt_blocked = True
                return Then.NOTHING
            return self._local(verb, f.reply)
        if verdict is Verdict.DROP:
            # Decided on a server reply: commands pipelined behind it are not
            # answered, whatever the timing, so the outcome never depends on it.
            return Close(replies.dropped(f.message), abort=after)
        return Then.RESET
