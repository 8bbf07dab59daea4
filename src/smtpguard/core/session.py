"""The inspector: one SMTP session between a client and the upstream server.

Theory of operation
-------------------
The driver feeds bytes with :meth:`Session.client_data` / :meth:`Session.server_data`
and connection changes with :meth:`server_connected` / :meth:`server_closed` /
:meth:`client_eof`; every call returns the actions to carry out, in order. Time is an
argument; the next deadline goes out as :class:`SetTimer`.

Commands are framed from a receive buffer (never from packets). Each command gets a
*slot* in a FIFO: a forwarded command's slot is filled by the server's next reply; a
refused command's slot is filled at once with the gateway's reply. Slots are flushed
to the client strictly in order, so a local reply waits behind earlier server replies
(RFC 2920 §3.1): nothing is dropped or reordered.

After DATA, AUTH, HELO or EHLO the client's bytes are held until the server answers, so the
gateway reads them the way the server will (message data after a 354, commands after
a refusal). In the DATA phase chunks are relayed as they arrive while
:class:`~smtpguard.core.data.DataScanner` watches for ``CRLF.CRLF`` and bad framing.

A message found invalid part-way is never completed upstream: the upstream
connection is aborted without the terminator (the server discards the partial
message), the rest of the message is read and dropped up to the client's real end of
data, the client gets a 5xx naming the reason, and a fresh upstream connection is
opened with the client's HELO/EHLO replayed, so the client's session goes on.
The client only gets a 2xx that the server sent.
"""

from __future__ import annotations

from smtpguard.core import replies
from smtpguard.core.actions import (
    Action,
    CloseClient,
    CloseServer,
    Direction,
    OpenServer,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.banner import pix_rewrite
from smtpguard.core.checks import finding, over
from smtpguard.core.data import DataScanner, Normalizer
from smtpguard.core.ehlo import filter_ehlo
from smtpguard.core.grammar import (
    REPLY_LINE_LIMIT,
    LineError,
    Reply,
    check_line_bytes,
    frame_reply_line,
    parse_command,
)
from smtpguard.core.message import MessageInspector
from smtpguard.core.policy import Smuggling, Verdict
from smtpguard.core.policy import StartTls as StartTlsPolicy
from smtpguard.core.relay import DataPhase
from smtpguard.core.state import (
    AFTER_REPLY,
    END_OF_DATA_VERB,
    HOLD_VERBS,
    TLS_SLOT,
    Phase,
    Slot,
    Upstream,
)

__all__ = ["Phase", "Session", "Upstream"]

# What a client may send before its new EHLO/HELO once TLS has started (RFC 3207 §4.2).
HELLO_FREE_VERBS = frozenset({"EHLO", "HELO", "NOOP", "RSET", "QUIT"})


class Session(DataPhase):
    """Inspector state machine for one client session. See the module docstring.

    ``Session(policy, trace=False, peer=None, client_tls=False)``: ``peer`` is the
    client's (address, port) for XCLIENT; ``client_tls`` marks an implicit-TLS port.
    """

    # ------------------------------------------------------------------ inputs
    def start(self, now: float) -> list[Action]:
        """The client is connected: open the upstream."""
        self._server_deadline = now + self.policy.timeouts.connect
        self._emit(OpenServer())
        return self._finish(now)

    def server_connected(self, now: float) -> list[Action]:
        if self.upstream is Upstream.CONNECTING:
            self.upstream = Upstream.GREETING
            self._server_deadline = now + self.policy.timeouts.greeting
        return self._finish(now)

    def server_data(self, data: bytes, now: float) -> list[Action]:
        if self.phase is Phase.CLOSED or self.upstream is Upstream.DOWN:
            return []
        if self.phase is Phase.TUNNEL:
            self._client_deadline = now + self.policy.timeouts.client_idle
            self._emit(ToClient(data))
            return self._finish(now)
        if self._sbuf:  # a partial reply line is pending
            self._sbuf += data
            if b"\n" not in data:
                if len(self._sbuf) > REPLY_LINE_LIMIT:
                    self._upstream_failed("reply line too long", now)
                return self._finish(now)
            data = bytes(self._sbuf)
            self._sbuf.clear()
        start, end = 0, len(data)
        while start < end and self._upstream_live():
            nl = data.find(b"\n", start)
            if nl < 0:
                self._sbuf += data[start:]
                if len(self._sbuf) > REPLY_LINE_LIMIT:
                    self._upstream_failed("reply line too long", now)
                break
            line = data if start == 0 and nl + 1 == end else data[start : nl + 1]
            start = nl + 1
            try:
                reply = self._assembler.add(frame_reply_line(line))
            except LineError as exc:
                self._upstream_failed(exc.reason, now)
                break
            if reply is not None:
                self._on_reply(reply, now)
        self._pump(now)
        return self._finish(now)

    def dedupe_result(self, queue_id: str | None, now: float) -> list[Action]:
        """The driver's answer to :class:`~smtpguard.core.dedupe.DedupeLookup`: the
        queue ID the server gave this transaction before, or None (not seen, or the
        store failed: the message is relayed)."""
        if self.phase is Phase.CLOSED:
            return []
        self._dedupe_answer(queue_id, now)
        self._pump(now)
        return self._finish(now)

    def server_closed(self, now: float) -> list[Action]:
        """The upstream connection closed or could not be opened."""
        if self.phase is not Phase.CLOSED and self.upstream is not Upstream.DOWN:
            self._upstream_lost(now)
            self._pump(now)
        return self._finish(now)

    def client_data(self, data: bytes, now: float) -> list[Action]:
        if self.phase is Phase.CLOSED or self._client_eof:
            return []
        if self.phase is Phase.TUNNEL:
            self._client_deadline = now + self.policy.timeouts.client_idle
            self._emit(ToServer(data))
            return self._finish(now)
        self._client_deadline = now + self.policy.timeouts.client_idle
        if self.phase is Phase.DATA and not self._cbuf:
            self._data(data, now)  # hot path: no copy into the buffer
        else:
            self._cbuf += data
        self._pump(now)
        return self._finish(now)

    def client_eof(self, now: float) -> list[Action]:
        if self.phase is not Phase.CLOSED:
            self._client_eof = True
            self._pump(now)
        return self._finish(now)

    def timer(self, now: float) -> list[Action]:
        """The armed timer fired: act on what expired, re-arm for the rest."""
        self._timer = None
        if self.phase is Phase.CLOSED:
            return []
        if self.phase is Phase.TUNNEL:
            deadline = self._client_deadline
            if deadline is not None and now >= deadline:
                # Nothing can be said inside TLS: close both sides.
                self._policy_event("SG-TUNNEL-TIMEOUT", "TLS tunnel idle past the timeout")
                self._emit(CloseServer())
                self._emit(CloseClient())
                self.upstream = Upstream.DOWN
                self.phase = Phase.CLOSED
            return self._finish(now)
        if self._server_deadline is not None and now >= self._server_deadline:
            self._policy_event("SG-UPSTREAM-TIMEOUT", "mail server did not answer in time")
            self._upstream_failed("timeout", now)
        elif (
            self._client_idle()
            and self._client_deadline is not None
            and (now >= self._client_deadline)
        ):
            self._policy_event("SG-CLIENT-TIMEOUT", "client idle past the timeout")
            self._abort_with(replies.CLIENT_TIMEOUT)
        self._pump(now)
        return self._finish(now)

    def shutdown(self, now: float) -> list[Action]:
        """Drain: finish the transaction in flight, then say 421 and close."""
        self._draining = True
        self._pump(now)
        return self._finish(now)

    @property
    def client_backlog(self) -> int:
        """Client bytes held unparsed: the driver pauses reading above a threshold."""
        return len(self._cbuf)

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    # --------------------------------------------------------------- replies
    def _on_reply(self, reply: Reply, now: float) -> None:
        self._trace_reply(Direction.SERVER_TO_GW, reply.raw)
        up = self.upstream
        if up is Upstream.GREETING:
            self._on_greeting(reply, now)
        elif self._handlers:
            self._handlers.popleft()(reply, now)
        elif self.phase is Phase.DATA:
            # Nothing is owed while the message streams: the server has taken some of
            # it as an end of data (or is broken). Out of step: partial-relay refusal.
            self._refuse_message(
                replies.UPSTREAM_DESYNC,
                "SG-UPSTREAM-DESYNC",
                f"mail server replied {reply.code} during message data: out of step, "
                "its connection aborted",
                memoryview(b""),
            )
        elif not self._awaiting:
            if reply.code == 421:  # the server is closing the session on its own
                self._slots.append(Slot("", reply=reply.raw))
                self._closing = True
                self._flush()
            else:  # a reply nothing asked for would be matched to the next command
                self._policy_event("SG-UPSTREAM-UNSOLICITED", f"unexpected reply {reply.code}")
                self._upstream_failed(f"unsolicited reply {reply.code}", now)
        else:
            self._on_command_reply(self._awaiting.popleft(), reply, now)

    def _on_command_reply(self, slot: Slot, reply: Reply, now: float) -> None:
        if slot.verb == "EHLO" and reply.code == 250:
            self._ehlo_line = slot.raw
            # terminate mode: secure the upstream first, answer with the EHLO after TLS
            if self._upstream_tls_first(reply, lambda r, n: self._complete(slot, r, n), now):
                return
        self._complete(slot, reply, now)

    def _complete(self, slot: Slot, reply: Reply, now: float) -> None:
        """Fill ``slot`` with the server's ``reply`` (as the client is to see it)."""
        if self.upstream is Upstream.HANDSHAKE:
            self._upstream_ready()
        verb = slot.verb
        cls = reply.code // 100
        raw = reply.raw
        if verb in ("HELO", "EHLO") and cls == 2:
            self._helo = slot.raw
            self._need_hello = False
            self._in_transaction = False
            if verb == "EHLO":
                raw, self._shown, removed = filter_ehlo(reply, self.policy, self._tls_offer())
                if removed:
                    self._policy_event(
                        "SG-EHLO-MASKED", f"EHLO keywords removed: {' '.join(removed)}", "mask"
                    )
            else:
                self._shown = frozenset()
        elif verb == "MAIL":
            self._in_transaction = cls == 2
            if cls == 2 and self._dedupe is not None:
                self._dedupe.mail_accepted(slot.raw)
        elif verb == "RCPT" and cls == 2:
            if self._dedupe is not None:
                self._dedupe.rcpt_accepted(slot.raw)
        elif verb == "RCPT" and cls == 5:
            self._invalid_rcpts += 1
            check = self.policy.checks.invalid_recipients
            if over(check, self._invalid_rcpts):
                self._enforce(
                    finding(
                        "invalid_recipients",
                        "SG-CHK-INVALID-RECIPIENTS",
                        f"{self._invalid_rcpts} recipients refused by the server (limit "
                        f"{check.limit})",
                        check,
                        550,
                        "5.7.1 Too many invalid recipients",
                    ),
                    "RCPT",
                    now,
                    after=True,
                )
        elif verb == END_OF_DATA_VERB:
            self._in_transaction = False
            if cls == 2:
                self.messages_relayed += 1
            if self._dedupe is not None:
                self._dedupe_accepted(reply)
        if self.phase is Phase.WAIT and not self._awaiting:  # the held command's reply
            self.phase = AFTER_REPLY.get((verb, cls), Phase.COMMAND)
            if self.phase is Phase.DATA:
                self._scanner = DataScanner()
                if self.policy.smuggling is Smuggling.NORMALIZE:
                    self._normalizer = Normalizer()
                self._inspector = MessageInspector(self.policy.checks)
                if self._dedupe is not None:
                    self._dedupe.data_started()
        slot.reply = raw
        if self.phase is Phase.TUNNEL:
            self._policy_event("SG-TLS-PASSTHROUGH", "STARTTLS relayed: inspection ends here")
            self._drop_injected()
            self._server_deadline = None
            self._client_deadline = now + self.policy.timeouts.client_idle
        if reply.code == 421 or (verb == "QUIT" and cls == 2):
            self._abort_with(None)
        self._server_deadline = (
            now + self._reply_timeout(self._awaiting[0].verb) if self._awaiting else None
        )
        self._flush()

    def _tls_offer(self) -> str:
        """How the EHLO reply shows STARTTLS: strip it, keep the server's, or offer
        the gateway's own (terminate mode, client not yet encrypted)."""
        mode = self.policy.starttls
        if mode is StartTlsPolicy.STRIP:
            return "strip"
        if mode is StartTlsPolicy.PASSTHROUGH:
            return "keep"
        return "strip" if self.client_tls else "offer"

    def _starttls(self, line: bytes, now: float) -> None:
        if self.client_tls:
            self._local_reply("STARTTLS", replies.TLS_ACTIVE)
        elif self.policy.starttls is StartTlsPolicy.TERMINATE:
            # Answered by the gateway; the handshake starts once the 220 is written.
            self._slots.append(Slot(TLS_SLOT, reply=replies.TLS_READY))
            self.phase = Phase.TLS
            self._flush()
        else:
            self._forward_command("STARTTLS", line, now)

    def tls_started(self, side: str, now: float) -> list[Action]:
        """The TLS handshake on ``side`` ("client" or "server") completed."""
        if self.phase is Phase.CLOSED:
            return []
        if side == "server":
            self._upstream_tls_started(now)
        else:
            self.client_tls = True
            self.phase = Phase.COMMAND
            self._forget_plaintext(now)
            self._pump(now)
        return self._finish(now)

    def _forget_plaintext(self, now: float) -> None:
        """RFC 3207 §4.2: after the handshake nothing learnt in clear holds, on either
        side. The gateway forgets the client's hello, the extensions it was shown and
        the envelope, and requires a new EHLO/HELO; the server's session (envelope,
        hello, any authentication) is ended by a fresh upstream connection."""
        self._shown = frozenset()
        self._helo = None
        self._ehlo_line = None
        self._in_transaction = False
        self._rcpt_count = 0
        self._need_hello = True
        self._reconnect(now)

    def tls_failed(self, side: str, now: float) -> list[Action]:
        if self.phase is Phase.CLOSED:
            return []
        if side == "server":
            self._upstream_failed("TLS handshake with the server failed", now)
            self._pump(now)
        else:
            self._policy_event("SG-TLS-CLIENT-FAILED", "TLS handshake with the client failed")
            self._reset_both()
        return self._finish(now)

    def _reply_timeout(self, verb: str) -> float:
        t = self.policy.timeouts
        if verb == END_OF_DATA_VERB:
            return t.data_end
        return t.data_init if verb == "DATA" else t.command

    # --------------------------------------------------------------- client side
    def _pump(self, now: float) -> None:
        """Consume held client bytes as far as the current state allows."""
        while not self._closing:
            phase = self.phase
            if phase is Phase.COMMAND or phase is Phase.AUTH:
                if (
                    self.upstream is not Upstream.READY
                    or len(self._slots) >= self.policy.max_pending
                ):
                    break
                if self._draining and not self._in_transaction and not self._slots:
                    self._abort_with(replies.SHUTTING_DOWN)
                    break
                if not self._cbuf:
                    break
                line = self._next_line()
                if line is None:
                    break
                if phase is Phase.AUTH:
                    self._auth_response(line, now)
                else:
                    self._command(line, now)
            elif phase is Phase.DATA:
                if not self._cbuf:
                    break
                chunk = bytes(self._cbuf)
                self._cbuf.clear()
                self._csearch = 0
                self._data(chunk, now)
            elif phase is Phase.BDAT:
                if not self._drain_bdat():
                    break
            else:  # WAIT, QUIT, CLOSED: nothing is read
                break
        self._finish_if_done()

    def _next_line(self) -> bytes | None:
        """The next command line, CRLF included, or None until one is complete.

        Lines are framed on CRLF only (RFC 5321 §2.3.8): a bare LF or bare CR inside
        a line does not end it, so the whole line up to its CRLF is judged (and
        refused) as one, and nothing after the stray byte runs as a command.
        """
        buf = self._cbuf
        limit = self._line_limit
        nl = buf.find(b"\r\n", self._csearch)
        if self._skip_line:
            if nl < 0:
                keep = 1 if buf.endswith(b"\r") else 0  # may be half of the CRLF
                del buf[: len(buf) - keep]
                self._csearch = 0
                return None
            del buf[: nl + 2]
            self._skip_line = False
            self._csearch = 0
            self._local_reply("", replies.LINE_TOO_LONG)
            return self._next_line()
        if nl < 0:
            self._csearch = max(len(buf) - 1, 0)
            if len(buf) > limit and self._line_too_long():
                return self._next_line()
            return None
        if nl + 2 > limit:
            return self._next_line() if self._line_too_long() else None
        line = bytes(buf[: nl + 2])
        del buf[: nl + 2]
        self._csearch = 0
        return line

    def _line_too_long(self) -> bool:
        """Act on an over-long command line; True if the rest of it is to be skipped."""
        limit = self._line_limit
        verdict = self.policy.checks.command_line_length.action
        self._policy_event("SG-CMD-TOO-LONG", f"command line over {limit} octets", verdict.value)
        self.commands_refused += 1
        if verdict is Verdict.REJECT:
            self._skip_line = True
        elif verdict is Verdict.RESET:
            self._closing = True
            self._emit(CloseServer(abort=True))
            self._emit(CloseClient(reset=True))
            self.phase = Phase.CLOSED
        else:
            self._close_after(replies.line_too_long_drop(limit))
        return self._skip_line

    def _command(self, line: bytes, now: float) -> None:
        body = line[:-2]  # framed on CRLF: any other CR or LF is inside the line
        bad = check_line_bytes(body)
        cmd = parse_command(line) if bad is None else None
        if self.trace:
            text = body.rstrip(b"\n").decode("utf-8", "surrogateescape")
            verb = cmd.verb if cmd else None
            if verb == "AUTH":
                text = "AUTH " + cmd.args.split(" ")[0] if cmd else text  # no credentials
            self._emit(Trace(Direction.CLIENT_TO_GW, text, verb=verb))
        if bad is not None:
            if not self._bad_line(bad, "command line"):
                self._local_reply("", replies.bad_command_bytes(bad))
            return
        if cmd is None:
            self.commands_refused += 1
            self._local_reply("", replies.SYNTAX)
            return
        verb = cmd.verb
        if verb == "BDAT":
            self._refuse_bdat(cmd.args)
            return
        if verb == "STARTTLS" and self.policy.starttls is not StartTlsPolicy.STRIP:
            self._starttls(line, now)
            return
        if verb not in self.policy.allowed_verbs and self._emulation.pix:
            # PIX 6.x Mailguard (lab emulation): the verb is overwritten in place and
            # the server answers the mangled command itself.
            self._policy_event("SG-EMULATE-REWRITE", f"{verb} rewritten (PIX emulation)", "log")
            self._forward_command(verb, pix_rewrite(line, self._emulation.rewrite), now)
            return
        if verb not in self.policy.allowed_verbs:
            self._policy_event(
                "SG-CMD-BLOCKED",
                f"{verb} refused: not allowed in {self.policy.mode.value} mode",
                "reject",
            )
            self.commands_refused += 1
            self._local_reply(verb, replies.UNRECOGNIZED)
            return
        if self._need_hello and verb not in HELLO_FREE_VERBS:
            self.commands_refused += 1
            self._local_reply(verb, replies.SEND_HELLO_FIRST)
            return
        if verb in ("MAIL", "RCPT") and self._envelope_refused(verb, cmd.args, now):
            return
        self._forward_command(verb, line, now)

    def _bad_line(self, bad: str, what: str) -> bool:
        """A client line with a bare CR, bare LF or NUL: refused whole. A client that
        keeps sending them is dropped (Postfix ``smtpd_forbid_bare_newline`` drops at
        the first). True when the session is being closed."""
        self.commands_refused += 1
        self._bad_lines += 1
        if self._bad_lines >= self.policy.bad_line_limit:
            self._policy_event("SG-CMD-BAD-BYTES", f"{bad} in {what}: closing", "drop-connection")
            self._close_after(replies.bad_lines_drop(bad))
            return True
        self._policy_event("SG-CMD-BAD-BYTES", f"{bad} in {what}", "reject")
        return False

    def _forward_command(self, verb: str, line: bytes, now: float) -> None:
        self._count(verb, "forwarded")
        slot = Slot(verb, line)
        self._slots.append(slot)
        self._awaiting.append(slot)
        if self._server_deadline is None:
            self._server_deadline = now + self._reply_timeout(verb)
        self._to_server(line, verb)
        if verb in HOLD_VERBS or self._emulation.pix:  # PIX: lock-step, one at a time
            self.phase = Phase.WAIT
        elif verb == "QUIT":
            self.phase = Phase.QUIT
        elif verb in ("RSET", "HELO", "EHLO"):
            self._in_transaction = False
            self._rcpt_count = 0

    def _auth_response(self, line: bytes, now: float) -> None:
        """A SASL response line (RFC 4954 §4): relayed, never parsed or logged; but
        framed like every client line, so a bare CR, bare LF or NUL never reaches the
        server. Such a line is replaced by ``*``, which cancels the exchange (§4), and
        the client gets the gateway's 501 once the server has answered the ``*``."""
        if self.trace:
            self._emit(Trace(Direction.CLIENT_TO_GW, "(AUTH response)"))
        bad = check_line_bytes(line[:-2])
        if bad is None:
            slot = Slot("AUTH", line)
            self._slots.append(slot)
            self._awaiting.append(slot)
            self._emit(ToServer(line))
            self.phase = Phase.WAIT
            return
        if self._bad_line(bad, "AUTH response"):
            return
        slot = Slot("AUTH")
        self._slots.append(slot)
        self.phase = Phase.WAIT
        self._internal(b"*\r\n", lambda r, n: self._auth_cancelled(slot, bad, r, n), now)

    def _auth_cancelled(self, slot: Slot, bad: str, reply: Reply, now: float) -> None:
        if reply.code == 334:  # still in the exchange after "*": out of step
            self._upstream_failed("AUTH not cancelled by '*'", now)
            return
        self._server_deadline = None
        slot.reply = replies.bad_auth_bytes(bad)
        self.phase = Phase.COMMAND
        self._flush()

    def _refuse_bdat(self, args: str) -> None:
        """BDAT is never relayed; its chunk is drained unparsed (RFC 3030 §2)."""
        self.commands_refused += 1
        size = args.split(" ")[0] if args else ""
        if not size.isdigit() or int(size) > self.policy.bdat_drain_limit:
            self._policy_event("SG-BDAT-REFUSED", "BDAT with unusable size: closing", "drop")
            self._close_after(replies.bdat_too_large())
            return
        self._policy_event("SG-BDAT-REFUSED", f"BDAT chunk of {size} octets drained", "reject")
        self._bdat_left = int(size)
        self.phase = Phase.BDAT
        self._drain_bdat()

    def _drain_bdat(self) -> bool:
        take = min(self._bdat_left, len(self._cbuf))
        del self._cbuf[:take]
        self._csearch = 0
        self._bdat_left -= take
        if self._bdat_left:
            return False
        self.phase = Phase.COMMAND
        self._local_reply("BDAT", replies.BDAT_REFUSED)
        return True
