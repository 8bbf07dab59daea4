"""The client's command lines: framing, the verb policy, envelope checks, and what
each verb does before it reaches the server.

Each command gets a slot in the reply pipeline: a forwarded command's slot is filled
by the server's next reply, a refused command's slot at once with the gateway's
reply. After DATA, AUTH, HELO, EHLO and STARTTLS (and every command in PIX
emulation) the client's bytes are held until the server answers, so the gateway
reads them the way the server will: message data after a 354, commands after a
refusal (RFC 2920 §3.1 makes them end a pipelined group anyway).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from smtpguard.core import replies
from smtpguard.core.actions import Direction, Trace
from smtpguard.core.banner import pix_rewrite
from smtpguard.core.buffer import LineTooLong
from smtpguard.core.checks import Finding, check_mail, check_rcpt, finding, over
from smtpguard.core.deadlines import reply_timeout
from smtpguard.core.ehlo import parameter_refused_reply, refused_parameter
from smtpguard.core.grammar import ascii_number, check_line_bytes, parse_command
from smtpguard.core.phases import Trigger
from smtpguard.core.pipeline import TLS_SLOT, Slot
from smtpguard.core.policy import StartTls as StartTlsPolicy
from smtpguard.core.policy import Verdict

if TYPE_CHECKING:
    from smtpguard.core.session import Session

# Client input is held after these until the server answers: DATA and AUTH change
# how the next bytes are read; HELO/EHLO decide which extensions (and so which MAIL
# parameters) the client may use.
HOLD_VERBS: Final = frozenset({"DATA", "AUTH", "EHLO", "HELO", "STARTTLS"})
# What a client may send before its new EHLO/HELO once TLS has started (RFC 3207 §4.2).
HELLO_FREE_VERBS: Final = frozenset({"EHLO", "HELO", "NOOP", "RSET", "QUIT"})


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

    __slots__ = ("_s",)
    __deletable__ = ("_s",)  # detach(): a closed session is freed without the cycle collector

    def __init__(self, session: Session) -> None:
        self._s = session

    def detach(self) -> None:
        """The session has closed: drop the reference back to it."""
        del self._s

    def next_line(self) -> bytes | None:
        """The next complete command line, acting on over-long ones on the way."""
        s = self._s
        buf = s.buffer
        while True:
            if buf.skipping:
                if not buf.skip():
                    return None
                s.local_reply("", replies.LINE_TOO_LONG)
            try:
                return buf.next_line(s.line_limit)
            except LineTooLong:
                if not self._line_too_long():
                    return None

    def _line_too_long(self) -> bool:
        """Act on an over-long command line; True if the rest of it is to be skipped."""
        s = self._s
        limit = s.line_limit
        verdict = s.policy.checks.command_line_length.action
        s.out.event("SG-CMD-TOO-LONG", f"command line over {limit} octets", verdict.value)
        s.commands_refused += 1
        if verdict is Verdict.REJECT:
            s.buffer.skipping = True
            return True
        if verdict is Verdict.RESET:
            s.reset_both()
        else:
            s.close_after(replies.line_too_long_drop(limit))
        return False

    def command(self, line: bytes, now: float) -> None:
        s = self._s
        body = line[:-2]  # framed on CRLF: any other CR or LF is inside the line
        bad = check_line_bytes(body)
        cmd = parse_command(line) if bad is None else None
        if s.out.client:
            text = body.rstrip(b"\n").decode("utf-8", "surrogateescape")
            verb = cmd.verb if cmd else None
            if verb == "AUTH":
                text = "AUTH " + cmd.args.split(" ")[0] if cmd else text  # no credentials
            s.out.emit(Trace(Direction.CLIENT_TO_GW, text, verb=verb))
        if bad is not None:
            if not self.bad_line(bad, "command line"):
                s.local_reply("", replies.bad_command_bytes(bad))
            return
        if cmd is None:
            s.commands_refused += 1
            s.local_reply("", replies.SYNTAX)
            return
        verb = cmd.verb
        policy = s.policy
        if verb == "BDAT":
            self._refuse_bdat(cmd.args)
        elif verb == "STARTTLS" and policy.starttls is not StartTlsPolicy.STRIP:
            self._starttls(line, now)
        elif verb not in policy.allowed_verbs and policy.emulation.pix:
            # PIX 6.x Mailguard (lab emulation): the verb is overwritten in place and
            # the server answers the mangled command itself.
            s.out.event("SG-EMULATE-REWRITE", f"{verb} rewritten (PIX emulation)", "log")
            self.forward(verb, pix_rewrite(line, policy.emulation.rewrite), now)
        elif verb not in policy.allowed_verbs:
            s.out.event(
                "SG-CMD-BLOCKED",
                f"{verb} refused: not allowed in {policy.mode.value} mode",
                "reject",
            )
            s.commands_refused += 1
            s.local_reply(verb, replies.UNRECOGNIZED)
        elif s.need_hello and verb not in HELLO_FREE_VERBS:
            s.commands_refused += 1
            s.local_reply(verb, replies.SEND_HELLO_FIRST)
        elif verb in ("MAIL", "RCPT") and self._envelope_refused(verb, cmd.args, line, now):
            pass
        else:
            self.forward(verb, line, now)

    def forward(self, verb: str, line: bytes, now: float, slot: Slot | None = None) -> None:
        """Relay a command; ``slot``: the reply slot it took while it was held."""
        s = self._s
        s.count(verb, "forwarded")
        if slot is None:
            s.replies.forwarded(verb, line)
        else:
            slot.raw = line
            s.replies.expect(slot)
        if s.deadlines.server is None:
            s.deadlines.server = now + reply_timeout(s.policy.timeouts, verb)
        s.out.to_server(line, verb)
        if verb in HOLD_VERBS or s.policy.emulation.pix:  # PIX: lock-step, one at a time
            s.goto(Trigger.HOLD)
        elif verb == "QUIT":
            s.goto(Trigger.QUIT)
        elif verb == "RSET":
            s.envelope.reset()

    def bad_line(self, bad: str, what: str) -> bool:
        """A client line with a bare CR, bare LF or NUL: refused whole. A client that
        keeps sending them is dropped (Postfix ``smtpd_forbid_bare_newline`` drops at
        the first). True when the session is being closed."""
        s = self._s
        s.commands_refused += 1
        s.bad_lines += 1
        if s.bad_lines >= s.policy.bad_line_limit:
            s.out.event("SG-CMD-BAD-BYTES", f"{bad} in {what}: closing", "drop-connection")
            s.close_after(replies.bad_lines_drop(bad))
            return True
        s.out.event("SG-CMD-BAD-BYTES", f"{bad} in {what}", "reject")
        return False

    # -- AUTH, STARTTLS, BDAT ---------------------------------------------------------
    def auth_response(self, line: bytes, now: float) -> None:
        """A SASL response line (RFC 4954 §4): relayed, never parsed or logged; but
        framed like every client line, so a bare CR, bare LF or NUL never reaches the
        server. Such a line is replaced by ``*``, which cancels the exchange (§4), and
        the client gets the gateway's 501 once the server has answered the ``*``."""
        s = self._s
        if s.out.client:
            s.out.emit(Trace(Direction.CLIENT_TO_GW, "(AUTH response)"))
        bad = check_line_bytes(line[:-2])
        if bad is None:
            s.replies.forwarded("AUTH", line)
            s.out.to_server(line, "AUTH")
            s.goto(Trigger.AUTH_LINE)
            return
        if self.bad_line(bad, "AUTH response"):
            return
        s.replies.forwarded("AUTH", b"*\r\n")
        s.cancelled_auth = bad  # the session answers the client when the server has
        s.deadlines.server = now + s.policy.timeouts.command
        s.out.to_server(b"*\r\n", "AUTH")
        s.goto(Trigger.AUTH_LINE)

    def _starttls(self, line: bytes, now: float) -> None:
        s = self._s
        if s.client_tls:
            s.local_reply("STARTTLS", replies.TLS_ACTIVE)
        elif s.policy.starttls is StartTlsPolicy.TERMINATE:
            # Answered by the gateway; the handshake starts once the 220 is written.
            s.replies.local(TLS_SLOT, replies.TLS_READY)
            s.goto(Trigger.TLS_OFFERED)
            s.flush()
        else:
            self.forward("STARTTLS", line, now)

    def _refuse_bdat(self, args: str) -> None:
        """BDAT is never relayed; its chunk is drained unparsed (RFC 3030 §2)."""
        s = self._s
        s.commands_refused += 1
        size = ascii_number(args.split(" ")[0]) if args else -1
        if size < 0 or size > s.policy.bdat_drain_limit:
            s.out.event("SG-BDAT-REFUSED", "BDAT with unusable size: closing", "drop")
            s.close_after(replies.bdat_too_large())
            return
        s.out.event("SG-BDAT-REFUSED", f"BDAT chunk of {size} octets drained", "reject")
        s.bdat_left = size
        s.goto(Trigger.BDAT)
        self.drain_bdat()

    def drain_bdat(self) -> bool:
        s = self._s
        s.bdat_left -= len(s.buffer.take(s.bdat_left))
        if s.bdat_left:
            return False
        s.goto(Trigger.BDAT_DRAINED)
        s.local_reply("BDAT", replies.BDAT_REFUSED)
        return True

    # -- MAIL and RCPT ---------------------------------------------------------------
    def _envelope_refused(self, verb: str, args: str, line: bytes, now: float) -> bool:
        """Run the MAIL/RCPT checks; True when the command must not be forwarded (now:
        a shared rate-limit holds it for its count, core/ratelimit.py)."""
        s = self._s
        env = s.envelope
        checks = s.policy.checks
        sender = None
        if verb == "MAIL":
            env.rcpt_count = 0
            found, sender, params = check_mail(args, checks)
        else:
            if env.rcpt_blocked:
                s.local_reply(verb, replies.TOO_MANY_INVALID)
                return True
            env.rcpt_count += 1
            found, params = check_rcpt(args, checks, env.rcpt_count)
        if found is not None:
            if found.verdict is Verdict.RATE_LIMIT and s.shared_rates is not None:
                s.rate_hold_command(found, verb, line, params, sender)
                return True
            if self.enforce(found, verb, now):
                return True
        return self.params_refused(verb, params)

    def params_refused(self, verb: str, params: str, slot: Slot | None = None) -> bool:
        """Refuse a MAIL/RCPT parameter of an extension the client was not shown;
        ``slot``: the reply slot of a command that was held."""
        s = self._s
        param = refused_parameter(verb, params, s.shown) if params else None
        if param is None:
            return False
        s.out.event(
            "SG-ESMTP-PARAM", f"{verb} parameter {param} of an extension not offered", "reject"
        )
        if slot is None:
            s.local_reply(verb, parameter_refused_reply(param))
        else:
            s.count(verb, "refused")
            slot.reply = parameter_refused_reply(param)
            s.flush()
        return True

    def invalid_rcpt(self, now: float) -> None:
        """The server refused a RCPT with 5xx: the session's count, and its check."""
        s = self._s
        env = s.envelope
        env.invalid_rcpts += 1
        check = s.policy.checks.invalid_recipients
        if over(check, env.invalid_rcpts):
            f = finding(
                "invalid_recipients",
                "SG-CHK-INVALID-RECIPIENTS",
                f"{env.invalid_rcpts} recipients refused by the server (limit {check.limit})",
                check,
                550,
                "5.7.1 Too many invalid recipients",
            )
            self.enforce(f, "RCPT", now, after=True)

    def enforce(self, f: Finding, verb: str, now: float, after: bool = False) -> bool:
        """Apply a command finding's verdict; True when the command is not forwarded.
        ``after``: the command was already relayed (a check on the server's reply)."""
        s = self._s
        verdict = f.verdict
        if verdict is Verdict.RATE_LIMIT:
            if after and s.shared_rates is not None:
                s.rate_count_after(f)  # decided when the store answers
                return True
            verdict = Verdict.LOG if s.rates.allow(f, now) else Verdict.REJECT
        s.out.event(f.event_id, f.message, verdict.value)
        if verdict is Verdict.LOG:
            return False
        s.commands_refused += 1
        if verdict is Verdict.REJECT:
            if after:
                s.envelope.rcpt_blocked = True
            else:
                s.local_reply(verb, f.reply)
        elif verdict is Verdict.DROP and after:
            # Decided on a server reply: commands pipelined behind it are not
            # answered, whatever the timing, so the outcome never depends on it.
            s.abort_with(replies.dropped(f.message))
        elif verdict is Verdict.DROP:
            s.close_after(replies.dropped(f.message))
        else:
            s.reset_both()
        return True
