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

After DATA or AUTH the client's bytes are held until the server answers, so the
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

import enum
from collections import deque

from smtpguard.core import replies
from smtpguard.core.actions import (
    Action,
    CloseClient,
    CloseServer,
    Direction,
    OpenServer,
    PolicyEvent,
    SetTimer,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.banner import greeting, pix_rewrite
from smtpguard.core.checks import Finding, check_mail, check_rcpt, finding, over
from smtpguard.core.data import DataScanner, normalize
from smtpguard.core.ehlo import filter_ehlo, parameter_refused_reply, refused_parameter
from smtpguard.core.grammar import (
    END_OF_DATA,
    REPLY_LINE_LIMIT,
    LineError,
    Reply,
    ReplyAssembler,
    check_line_bytes,
    parse_command,
)
from smtpguard.core.message import MessageInspector
from smtpguard.core.policy import Policy, Smuggling, Verdict


class Phase(enum.Enum):
    COMMAND = "command"  # framing command lines
    WAIT = "wait"  # DATA or AUTH forwarded: client bytes held until the server answers
    AUTH = "auth"  # server sent 334: the next client line is an AUTH response
    DATA = "data"  # relaying message data
    BDAT = "bdat"  # draining a refused BDAT chunk
    QUIT = "quit"  # QUIT forwarded: nothing more is read
    CLOSED = "closed"


class Upstream(enum.Enum):
    CONNECTING = "connecting"
    GREETING = "greeting"  # connected, waiting for the 220
    REPLAY = "replay"  # a fresh connection: the client's HELO/EHLO was replayed
    READY = "ready"
    DOWN = "down"


# Which phase a server reply to a held command leads to: (verb, reply class) -> phase.
_AFTER_REPLY: dict[tuple[str, int], Phase] = {
    ("DATA", 3): Phase.DATA,
    ("AUTH", 3): Phase.AUTH,
}

_CLIENT_TURN = frozenset({Phase.COMMAND, Phase.DATA, Phase.AUTH, Phase.BDAT})

# Client input is held after these until the server answers: DATA and AUTH change
# how the next bytes are read; HELO/EHLO decide which extensions (and so which
# MAIL parameters) the client may use, and RFC 2920 §3.1 makes them end a group.
_HOLD_VERBS = frozenset({"DATA", "AUTH", "EHLO", "HELO"})

END_OF_DATA_VERB = "."  # slot name for the final reply to a message


class _Slot:
    """A reply position in the pipeline. ``reply`` is None until known."""

    __slots__ = ("raw", "reply", "verb")

    def __init__(self, verb: str, raw: bytes = b"", reply: bytes | None = None) -> None:
        self.verb = verb
        self.raw = raw
        self.reply = reply


class Session:
    """Inspector state machine for one client session. See the module docstring."""

    def __init__(self, policy: Policy, *, trace: bool = False) -> None:
        self.policy = policy
        self.trace = trace
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
        self._slots: deque[_Slot] = deque()  # all replies owed to the client, in order
        self._awaiting: deque[_Slot] = deque()  # the subset waiting for the server
        self._greeted = False
        self._helo: bytes | None = None  # last HELO/EHLO the server accepted
        self._scanner: DataScanner | None = None
        self._refusal: bytes | None = None  # reply owed at end of a dropped message
        self._held_cr = False  # a chunk ended in CR that is not relayed yet
        self._bare_break = False  # normalize mode: the last relayed line break was bare
        self._inspector: MessageInspector | None = None
        self._shown: frozenset[str] = frozenset()  # EHLO keywords the client was shown
        self._rcpt_count = 0  # RCPT commands in this transaction
        self._invalid_rcpts = 0  # RCPTs the server refused with 5xx, this session
        self._rcpt_blocked = False
        self._rates: dict[str, tuple[float, int]] = {}  # rate-limited checks
        self._bdat_left = 0
        self._skip_line = False  # discarding the rest of an over-long command line
        self._closing = False  # close once every owed reply is flushed
        self._client_eof = False
        self._draining = False
        self._in_transaction = False
        self._client_deadline: float | None = None
        self._server_deadline: float | None = None
        self._timer: float | None = None
        # Counters for metrics and tests, read by the driver when the session ends.
        self.messages_relayed = 0
        self.messages_refused = 0
        self.commands_refused = 0
        self.message_octets = 0  # message data received from the client
        self.commands: dict[tuple[str, str], int] = {}  # (verb, "forwarded"|"refused")

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
                reply = self._assembler.add(line)
            except LineError as exc:
                self._upstream_failed(exc.reason, now)
                break
            if reply is not None:
                self._on_reply(reply, now)
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
        if self.phase is Phase.CLOSED:
            return []
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
        elif up is Upstream.REPLAY:
            if reply.positive:
                self.upstream = Upstream.READY
                self._server_deadline = None
            else:
                self._reconnect_failed("replayed HELO/EHLO refused")
        elif not self._awaiting:
            if reply.code == 421:  # the server is closing the session on its own
                self._slots.append(_Slot("", reply=reply.raw))
                self._closing = True
                self._flush()
            else:
                self._policy_event("SG-UPSTREAM-UNSOLICITED", f"unexpected reply {reply.code}")
        else:
            self._on_command_reply(self._awaiting.popleft(), reply, now)

    def _on_greeting(self, reply: Reply, now: float) -> None:
        if not self._greeted:
            self._greeted = True
            self.upstream = Upstream.READY
            self._server_deadline = None
            self._send_client(greeting(reply, self.policy))
            if reply.code == 421:
                self._closing = True
                self._finish_if_done()
        elif reply.code != 220:
            self._reconnect_failed(f"greeting {reply.code} on reconnect")
        elif self._helo is not None:
            self.upstream = Upstream.REPLAY
            self._server_deadline = now + self.policy.timeouts.command
            self._to_server(self._helo, "EHLO" if self._helo[:4].upper() == b"EHLO" else "HELO")
        else:
            self.upstream = Upstream.READY
            self._server_deadline = None

    def _on_command_reply(self, slot: _Slot, reply: Reply, now: float) -> None:
        verb = slot.verb
        cls = reply.code // 100
        raw = reply.raw
        if verb in ("HELO", "EHLO") and cls == 2:
            self._helo = slot.raw
            self._in_transaction = False
            if verb == "EHLO":
                raw, self._shown, removed = filter_ehlo(reply, self.policy)
                if removed:
                    self._policy_event(
                        "SG-EHLO-MASKED", f"EHLO keywords removed: {' '.join(removed)}", "mask"
                    )
            else:
                self._shown = frozenset()
        elif verb == "MAIL":
            self._in_transaction = cls == 2
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
        if self.phase is Phase.WAIT and not self._awaiting:  # the held command's reply
            self.phase = _AFTER_REPLY.get((verb, cls), Phase.COMMAND)
            if self.phase is Phase.DATA:
                self._scanner = DataScanner()
                self._inspector = MessageInspector(self.policy.checks)
        slot.reply = raw
        if reply.code == 421 or (verb == "QUIT" and cls == 2):
            self._abort_with(None)
        self._server_deadline = (
            now + self._reply_timeout(self._awaiting[0].verb) if self._awaiting else None
        )
        self._flush()

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
                    self._auth_response(line)
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
        buf = self._cbuf
        limit = self._line_limit
        nl = buf.find(b"\n", self._csearch)
        if self._skip_line:
            if nl < 0:
                buf.clear()
                self._csearch = 0
                return None
            del buf[: nl + 1]
            self._skip_line = False
            self._csearch = 0
            self._local_reply("", replies.LINE_TOO_LONG)
            return self._next_line()
        if nl < 0:
            self._csearch = len(buf)
            if len(buf) > limit:
                self._line_too_long()
            return self._next_line() if self._skip_line else None
        if nl + 1 > limit:
            self._line_too_long()
            return self._next_line() if self._skip_line else None
        line = bytes(buf[: nl + 1])
        del buf[: nl + 1]
        self._csearch = 0
        return line

    def _line_too_long(self) -> None:
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

    def _command(self, line: bytes, now: float) -> None:
        body = line[:-2] if line.endswith(b"\r\n") else line  # keeps a bare LF visible
        bad = check_line_bytes(body)
        cmd = parse_command(line) if bad is None else None
        if self.trace:
            text = body.rstrip(b"\n").decode("utf-8", "surrogateescape")
            verb = cmd.verb if cmd else None
            if verb == "AUTH":
                text = "AUTH " + cmd.args.split(" ")[0] if cmd else text  # no credentials
            self._emit(Trace(Direction.CLIENT_TO_GW, text, verb=verb))
        if bad is not None:
            self._policy_event("SG-CMD-BAD-BYTES", f"{bad} in command line", "reject")
            self.commands_refused += 1
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
        if verb in ("MAIL", "RCPT") and self._envelope_refused(verb, cmd.args, now):
            return
        self._forward_command(verb, line, now)

    def _envelope_refused(self, verb: str, args: str, now: float) -> bool:
        """Run the MAIL/RCPT checks; True when the command must not be forwarded."""
        checks = self.policy.checks
        if verb == "MAIL":
            self._rcpt_count = 0
            found, _, params = check_mail(args, checks)
        else:
            if self._rcpt_blocked:
                self._local_reply(verb, replies.TOO_MANY_INVALID)
                return True
            self._rcpt_count += 1
            found, params = check_rcpt(args, checks, self._rcpt_count)
        if found is not None and self._enforce(found, verb, now):
            return True
        param = refused_parameter(verb, params, self._shown) if params else None
        if param is not None:
            self._policy_event(
                "SG-ESMTP-PARAM", f"{verb} parameter {param} of an extension not offered", "reject"
            )
            self._local_reply(verb, parameter_refused_reply(param))
            return True
        return False

    def _enforce(self, f: Finding, verb: str, now: float, after: bool = False) -> bool:
        """Apply a command finding's verdict; True when the command is not forwarded.
        ``after``: the command was already relayed (a check on the server's reply)."""
        verdict = f.verdict
        if verdict is Verdict.RATE_LIMIT:
            verdict = Verdict.LOG if self._within_rate(f, now) else Verdict.REJECT
        self._policy_event(f.event_id, f.message, verdict.value)
        if verdict is Verdict.LOG:
            return False
        self.commands_refused += 1
        if verdict is Verdict.REJECT:
            if after:
                self._rcpt_blocked = True
            else:
                self._local_reply(verb, f.reply)
        elif verdict is Verdict.DROP:
            self._close_after(replies.dropped(f.message))
        else:
            self._reset_both()
        return True

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

    def _forward_command(self, verb: str, line: bytes, now: float) -> None:
        key = (verb, "forwarded")
        self.commands[key] = self.commands.get(key, 0) + 1
        slot = _Slot(verb, line)
        self._slots.append(slot)
        self._awaiting.append(slot)
        if self._server_deadline is None:
            self._server_deadline = now + self._reply_timeout(verb)
        self._to_server(line, verb)
        if verb in _HOLD_VERBS or self._emulation.pix:  # PIX: lock-step, one at a time
            self.phase = Phase.WAIT
        elif verb == "QUIT":
            self.phase = Phase.QUIT
        elif verb in ("RSET", "HELO", "EHLO"):
            self._in_transaction = False
            self._rcpt_count = 0

    def _auth_response(self, line: bytes) -> None:
        """A SASL response line (RFC 4954 §4): relayed, never parsed or logged."""
        if self.trace:
            self._emit(Trace(Direction.CLIENT_TO_GW, "(AUTH response)"))
        slot = _Slot("AUTH", line)
        self._slots.append(slot)
        self._awaiting.append(slot)
        self._emit(ToServer(line))
        self.phase = Phase.WAIT

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

    # ------------------------------------------------------------------ data
    def _data(self, chunk: bytes, now: float) -> None:
        """Relay one chunk of message data; at the end, queue the final reply."""
        scanner = self._scanner
        assert scanner is not None
        scan = scanner.scan(chunk)
        stop = len(chunk) if scan.end < 0 else scan.end
        # A CR ending a chunk is held back until the next byte shows it is part of a
        # CRLF, so the server gets exactly the bytes before the first bad one,
        # whatever the segmentation.
        if self._emulation.split_eod_bug and 0 <= scan.end < len(END_OF_DATA) < scanner.size:
            self._split_eod_bug(chunk, scan.end)
            return
        held, self._held_cr = self._held_cr, False
        if self._refusal is None:
            self._inspect(chunk if stop == len(chunk) else chunk[:stop], now)
        if self._refusal is None and self.phase is Phase.CLOSED:
            return
        if (
            self._refusal is None
            and self.policy.smuggling is Smuggling.NORMALIZE
            and (scan.invalid_at >= 0 or held or self._bare_break)
            and scan.reason != "NUL"
        ):
            self._normalized(chunk[:stop], held, scan.end < 0)
        elif self._refusal is None and scan.invalid_at >= 0:
            if held and scan.invalid_at > 0:
                self._emit(ToServer(b"\r"))
            self._refuse_message(
                replies.message_rejected(scan.reason),
                "SG-DATA-BAD-BYTES",
                f"{scan.reason} in message data: message refused",
                memoryview(chunk)[: scan.invalid_at],
            )
        elif self._refusal is None:
            if held:
                self._emit(ToServer(b"\r"))
            send = stop
            if scan.end < 0 and chunk.endswith(b"\r"):
                send -= 1
                self._held_cr = True
            if send == len(chunk):
                self._emit(ToServer(chunk))
            elif send:
                self._emit(ToServer(memoryview(chunk)[:send]))
        if scan.end < 0:
            return
        self._scanner = None
        self._inspector = None
        self._bare_break = False
        self._rcpt_count = 0
        self.phase = Phase.COMMAND
        self.message_octets += scanner.size
        if self.trace:
            self._emit(Trace(Direction.CLIENT_TO_GW, "", size=scanner.size))
        if self._refusal is not None:
            self.messages_refused += 1
            self._local_reply(END_OF_DATA_VERB, self._refusal)
            self._refusal = None
            self._reconnect(now)
        else:
            slot = _Slot(END_OF_DATA_VERB)
            self._slots.append(slot)
            self._awaiting.append(slot)
            self._server_deadline = now + self.policy.timeouts.data_end
        if stop < len(chunk):
            self._cbuf[:0] = chunk[stop:]

    def _split_eod_bug(self, chunk: bytes, end: int) -> None:
        """CSCds90792, reproduced for labs: an end-of-data sequence split over more
        than one received segment is never passed on. The server waits for the rest,
        the client for a reply that never comes: both time out, the sender re-sends."""
        self._policy_event(
            "SG-EMULATE-SPLIT-EOD", "PIX emulation: split end-of-data swallowed (CSCds90792)", "log"
        )
        self._held_cr = False
        self._scanner = None
        self._inspector = None
        self.phase = Phase.QUIT  # nothing more is read; no reply will come
        self._cbuf.clear()

    def _inspect(self, part: bytes, now: float) -> None:
        """Content checks on the message bytes of one chunk, verdicts applied."""
        inspector = self._inspector
        if inspector is None:
            return
        for f in inspector.feed(part):
            verdict = f.verdict
            if verdict is Verdict.RATE_LIMIT:
                verdict = Verdict.LOG if self._within_rate(f, now) else Verdict.REJECT
            if verdict is Verdict.LOG:
                self._policy_event(f.event_id, f.message, "log")
            elif verdict is Verdict.REJECT:
                self._refuse_message(
                    f.reply, f.event_id, f.message + ": message refused", memoryview(b"")
                )
                return
            elif verdict is Verdict.DROP:
                self._policy_event(f.event_id, f.message, verdict.value)
                self._refusal = replies.dropped(f.message)
                self._emit(CloseServer(abort=True))
                self.upstream = Upstream.DOWN
                self._server_deadline = None
                self._scanner = None
                self.phase = Phase.COMMAND
                self._close_after(self._refusal)
                return
            else:
                self._policy_event(f.event_id, f.message, verdict.value)
                self._reset_both()
                return

    def _normalized(self, part: bytes, held: bool, more: bool) -> None:
        """Smuggling ``normalize`` mode: CRLF line ends and re-stuffed dots, on bytes
        whose end of data was already fixed on the raw stream."""
        if held:
            part = b"\r" + part
        if more and part.endswith(b"\r"):
            part = part[:-1]
            self._held_cr = True
        out, self._bare_break = normalize(part, self._bare_break)
        if out != part:
            self._policy_event("SG-DATA-NORMALIZED", "bare line ends rewritten to CRLF", "log")
        if out:
            self._emit(ToServer(out))

    def _refuse_message(self, reply: bytes, event_id: str, message: str, clean: memoryview) -> None:
        self._policy_event(event_id, message, "reject")
        self._refusal = reply
        if len(clean):
            self._emit(ToServer(clean))
        # The server must never see the terminator: abort its connection now.
        self._emit(CloseServer(abort=True))
        self.upstream = Upstream.DOWN
        self._server_deadline = None

    # --------------------------------------------------------------- upstream
    def _reconnect(self, now: float) -> None:
        if self.upstream is not Upstream.DOWN:
            self._emit(CloseServer(abort=True))
        self._sbuf.clear()
        self._assembler = ReplyAssembler()
        self.upstream = Upstream.CONNECTING
        self._server_deadline = now + self.policy.timeouts.connect
        self._emit(OpenServer())

    def _reconnect_failed(self, why: str) -> None:
        self._policy_event("SG-UPSTREAM-RECONNECT-FAILED", why)
        self._emit(CloseServer(abort=True))
        self.upstream = Upstream.DOWN
        self._abort_with(replies.SERVICE_UNAVAILABLE)

    def _upstream_failed(self, why: str, now: float) -> None:
        """The upstream misbehaved: drop it and handle it like a lost connection."""
        self._policy_event("SG-UPSTREAM-ERROR", f"mail server connection dropped: {why}")
        self._emit(CloseServer(abort=True))
        self._upstream_lost(now)

    def _upstream_lost(self, now: float) -> None:
        was = self.upstream
        self.upstream = Upstream.DOWN
        self._server_deadline = None
        if not self._greeted:
            self._send_client(replies.SERVICE_UNAVAILABLE)
            self._abort_with(None)
        elif was is not Upstream.READY:
            self._reconnect_failed(f"upstream lost while {was.value}")
        elif self.phase is Phase.DATA:
            self._policy_event("SG-UPSTREAM-LOST", "mail server lost during message data")
            self._refusal = replies.MESSAGE_UPSTREAM_LOST
        elif self._awaiting and self._awaiting[0].verb == END_OF_DATA_VERB:
            self._policy_event("SG-UPSTREAM-LOST", "mail server lost before its final reply")
            self._awaiting.popleft().reply = replies.MESSAGE_UPSTREAM_LOST
            self._in_transaction = False
            if self._awaiting:
                self._abort_with(replies.UPSTREAM_LOST)
            else:
                self._reconnect(now)
            self._flush()
        else:
            self._abort_with(replies.UPSTREAM_LOST)

    # ---------------------------------------------------------------- helpers
    def _local_reply(self, verb: str, reply: bytes) -> None:
        if verb and verb != END_OF_DATA_VERB:
            key = (verb, "refused")
            self.commands[key] = self.commands.get(key, 0) + 1
        self._slots.append(_Slot(verb, reply=reply))
        self._flush()

    def _close_after(self, reply: bytes) -> None:
        """Owe ``reply`` after every earlier reply, read nothing more, then close."""
        self._slots.append(_Slot("", reply=reply))
        self._closing = True
        self._flush()

    def _abort_with(self, reply: bytes | None) -> None:
        """Answer the first unanswered slot with ``reply`` (or nothing), drop the
        rest, and close once everything before it is flushed."""
        kept: deque[_Slot] = deque()
        for slot in self._slots:
            if slot.reply is None:
                break
            kept.append(slot)
        if reply is not None:
            kept.append(_Slot("", reply=reply))
        self._slots = kept
        self._awaiting.clear()
        self._closing = True
        self._flush()

    def _flush(self) -> None:
        slots = self._slots
        while slots and slots[0].reply is not None:
            reply = slots.popleft().reply
            assert reply is not None
            self._send_client(reply)
            self._client_deadline = None  # the client's turn starts now
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        if self.phase is Phase.CLOSED or self._slots:
            return
        # After EOF, finish once nothing owed remains and no complete command is held.
        eof_done = (
            self._client_eof
            and self.phase is not Phase.WAIT
            and (self.phase is Phase.DATA or b"\n" not in self._cbuf)
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
        return not self._slots and self.phase in _CLIENT_TURN

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _finish(self, now: float) -> list[Action]:
        deadline = None
        if self.phase is not Phase.CLOSED:
            deadline = self._server_deadline
            if not self._slots and self.phase in _CLIENT_TURN:
                client = self._client_deadline
                if client is None:
                    client = self._client_deadline = now + self.policy.timeouts.client_idle
                if deadline is None or client < deadline:
                    deadline = client
        if deadline != self._timer:
            self._timer = deadline
            self._out.append(SetTimer(deadline))
        out, self._out = self._out, []
        return out
