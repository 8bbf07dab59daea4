"""The inspector: one SMTP session between a client and the upstream server.

Theory of operation
-------------------
The driver hands every input to :meth:`Session.handle` as an event
(:mod:`smtpguard.core.events`) with the current time, and carries out the actions it
returns, in order (:mod:`smtpguard.core.actions`). The next deadline goes out as
:class:`~smtpguard.core.actions.SetTimer`; nothing here reads the clock.

The session holds its parts and moves its phase through one table
(:mod:`smtpguard.core.phases`):

* :class:`~smtpguard.core.buffer.ReceiveBuffer` frames the client's bytes on CRLF;
* :class:`~smtpguard.core.commands.Commands` handles each command line;
* :class:`~smtpguard.core.pipeline.ReplyPipeline` keeps one slot per reply owed to
  the client and sends them strictly in order (RFC 2920 §3.1);
* :class:`~smtpguard.core.upstream.UpstreamLink` frames the server's replies and runs
  the gateway's own handshake with it (XCLIENT, HELO replay, STARTTLS);
* :class:`~smtpguard.core.relay.MessageRelay` relays one message as it streams, with
  the end of data found on the raw bytes;
* :class:`~smtpguard.core.deadlines.Deadlines` keeps the timeouts.

A message found invalid part-way is never completed upstream: the upstream
connection is aborted without the terminator, the rest of the message is read and
dropped up to the client's real end of data, the client gets a 5xx naming the reason,
and a fresh upstream connection is opened with the client's HELO/EHLO replayed. The
client only gets a 2xx that the server sent.
"""

from __future__ import annotations

from smtpguard.core import replies
from smtpguard.core.actions import (
    Action,
    CloseClient,
    CloseServer,
    Direction,
    OpenServer,
    PassLookup,
    PassRecord,
    SetTimer,
    StartTls,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.buffer import ReceiveBuffer
from smtpguard.core.checks import Rates
from smtpguard.core.commands import NOTHING_SHOWN, Close, Commands, Then
from smtpguard.core.deadlines import Deadlines, reply_timeout
from smtpguard.core.dedupe import DedupeLookup
from smtpguard.core.duplicates import Duplicates, Release, Suppress
from smtpguard.core.ehlo import filter_ehlo, tls_offer
from smtpguard.core.events import (
    ClientData,
    ClientEof,
    Cut,
    DedupeAnswer,
    Event,
    PassAnswer,
    RateAnswer,
    ServerClosed,
    ServerConnected,
    ServerData,
    Shutdown,
    Side,
    Start,
    TimerFired,
    TlsDone,
    TlsFailed,
)
from smtpguard.core.grammar import Reply
from smtpguard.core.output import Output
from smtpguard.core.phases import (
    CLIENT_TURN,
    DRAINING,
    EOF_SEEN,
    NEXT,
    NEXT_ENDING,
    READING,
    REPLY_TRIGGERS,
    End,
    Ending,
    Greet,
    Link,
    NotInTable,
    Phase,
    Trigger,
    Upstream,
    hello,
)
from smtpguard.core.pipeline import (
    END_OF_DATA_VERB,
    TLS_SLOT,
    ReplyPipeline,
    Slot,
)
from smtpguard.core.policy import DedupeReply, Policy, ScreenAction
from smtpguard.core.ratelimit import Decision as RateDecision
from smtpguard.core.ratelimit import SharedRates
from smtpguard.core.relay import DROPPED, RESET, SPLIT_EOD, MessageRelay
from smtpguard.core.screen import Caught, Screen
from smtpguard.core.upstream import XCLIENT_REFUSED, After, Secured, UpstreamLink

__all__ = ["Phase", "Session", "Upstream"]


class Session:
    """Inspector state machine for one client session. See the module docstring.

    ``Session(policy, trace=False, peer=None, client_tls=False)``: ``trace`` says
    which protocol-log entries to build (a ``TRACE_*`` mask of core/actions.py, or
    True for all); ``peer`` is the client's (address, port) for XCLIENT;
    ``client_tls`` marks an implicit-TLS port.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        trace: bool | int = False,
        peer: tuple[str, int] | None = None,
        client_tls: bool = False,
    ) -> None:
        self.policy = policy
        self.phase = Phase.COMMAND
        self.out = Output(trace)
        self.buffer = ReceiveBuffer()
        self.replies = ReplyPipeline()
        self.deadlines = Deadlines()
        self.link = UpstreamLink(policy, self.out, self.deadlines, peer)
        self.rates = Rates()
        self.relay: MessageRelay | None = None
        self.duplicates = (
            Duplicates(policy.dedupe_answer is DedupeReply.QUEUE_ID) if policy.dedupe else None
        )
        self.shared_rates = SharedRates(peer) if policy.shared_rates else None
        self.cmds = Commands(
            policy,
            self.out,
            self.buffer,
            self.replies,
            self.deadlines,
            self.rates,
            self.shared_rates,
            client_tls,
        )
        self.envelope = self.cmds.envelope
        self.screen = Screen(policy.screen)
        self.helo: bytes | None = None  # last HELO/EHLO the server accepted
        self.ehlo_line: bytes | None = None  # the client's EHLO, re-sent after TLS
        self.injected = 0  # plaintext octets discarded between STARTTLS and TLS
        self.ending = Ending.OPEN  # EOF, shutdown, closing: the ENDING table
        # Counters for metrics and tests, read by the driver when the session ends.
        self.messages_relayed = 0
        self.messages_refused = 0
        self.message_octets = 0  # message data received from the client

    # ---------------------------------------------------------------- the entry point
    def handle(self, event: Event, now: float) -> list[Action]:
        """Feed one event; the actions to carry out, in order."""
        phase = self.phase
        if phase is Phase.CLOSED:
            return []
        self.screen.now = now
        # Bytes from either side are nearly every event: handled here, inline.
        if isinstance(event, ClientData):
            ending = self.ending  # OPEN first: an identity test, no set lookup
            if (ending is Ending.OPEN or ending not in EOF_SEEN) and not self._screened(
                self.screen.arrived(event.data)
            ):
                self.deadlines.client = now + self.policy.timeouts.client_idle
                if phase is Phase.DATA and not self.buffer.data:
                    self._data(event.data, now)  # hot path: no copy into the buffer
                    self._pump(now)
                elif phase is Phase.TUNNEL:
                    self.out.emit(ToServer(event.data))
                elif phase is Phase.TLS:  # plaintext after STARTTLS, before the handshake
                    self.injected += len(event.data)
                else:
                    self.buffer.append(event.data)
                    self._pump(now)
        elif isinstance(event, ServerData):
            link = self.link
            if not link.live:  # closed, or parked until the next command
                pass
            elif phase is Phase.TUNNEL:
                self.deadlines.client = now + self.policy.timeouts.client_idle
                self.out.emit(ToClient(event.data))
            else:
                link.feed(event.data)
                while link.live:
                    reply = link.next_reply()
                    if reply is None:
                        break
                    if isinstance(reply, str):  # not a reply: the link fails
                        self._link(link.failed(reply), now)
                        break
                    self.on_reply(reply, now)
                self._pump(now)
        elif isinstance(event, TimerFired):
            self._timer(now)
        elif isinstance(event, Start):
            self.deadlines.server = now + self.policy.timeouts.connect
            self.out.emit(OpenServer())
            if self.policy.screen.greet_wait:
                self._pregreet(now, None)
        elif isinstance(event, ServerConnected):
            self.link.connected(now)
        elif isinstance(event, ServerClosed):
            if self.link.live:
                self.upstream_lost(now, closed=b"")
                self._pump(now)
        elif isinstance(event, ClientEof):
            self.end(End.EOF)
            self._pump(now)
        elif isinstance(event, Shutdown):
            self.end(End.SHUTDOWN)
            self._pump(now)
        elif isinstance(event, Cut):
            # The drain cut short: the first reply still owed becomes 421 4.3.2 (never
            # a 2xx the server has not sent, the final reply to a message included)
            # and both sides close now. The upstream is reset: a message whose end of
            # data it has not had is never completed.
            self.deadlines.server = None
            if self.link.live:
                self.out.emit(CloseServer(abort=True))
                self.link.move(Link.LOST)
            # Nothing can be said inside (or into) the client's TLS.
            tls = phase is Phase.TUNNEL or phase is Phase.TLS
            self.abort_with(None if tls else replies.SHUTTING_DOWN)
        elif isinstance(event, TlsDone):
            self._tls_done(event.side, now)
        elif isinstance(event, DedupeAnswer):
            if self.duplicates is not None:
                self._dedupe_answer(self.duplicates.answer(event.queue_id), now)
                self._pump(now)
        elif isinstance(event, RateAnswer):
            if self.shared_rates is not None:
                self._rate_answer(self.shared_rates, event.allowed, now)
                self._pump(now)
        elif isinstance(event, PassAnswer):
            self._pregreet(now, event.passed)
        elif isinstance(event, TlsFailed):
            if event.side is Side.SERVER:
                self._link(self.link.failed("TLS handshake with the server failed"), now)
                self._pump(now)
            else:
                self.out.event("SG-TLS-CLIENT-FAILED", "TLS handshake with the client failed")
                self.reset_both()
        else:
            raise TypeError(f"not an event: {event!r}")
        out = self.out
        phase = self.phase
        if phase is not Phase.CLOSED:  # arm the timer for the earliest deadline
            turn = (not self.replies.slots and phase in CLIENT_TURN) or phase is Phase.TUNNEL
            deadline = self.deadlines.next_timer(now, turn, self.policy.timeouts.client_idle)
            if deadline is not None:
                out.actions.append(SetTimer(deadline))
        else:
            # Closed for good: the parts let go of the session, so that nothing refers
            # back to it and it is freed by reference counting, not the cycle collector.
            self.relay = None
        actions = out.actions
        out.actions = []
        return actions

    @property
    def client_backlog(self) -> int:
        """Client bytes held unparsed: the driver pauses reading above a threshold."""
        return len(self.buffer)

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def upstream(self) -> Upstream:
        return self.link.state

    def goto(self, trigger: Trigger) -> Phase:
        """The one way the phase changes: by the table (a missing pair is a bug,
        raised as :class:`NotInTable`)."""
        try:
            phase = self.phase = NEXT[trigger][self.phase]  # TRANSITIONS[(phase, trigger)]
        except KeyError:
            raise NotInTable("TRANSITIONS", self.phase, trigger) from None
        return phase

    def end(self, trigger: End) -> None:
        """The one way the ending changes: by the ENDING table (total)."""
        self.ending = NEXT_ENDING[trigger][self.ending]

    # ------------------------------------------------------------------ events
    def _timer(self, now: float) -> None:
        """The armed timer fired: act on what expired, re-arm for the rest."""
        d = self.deadlines
        d.timer = None
        screen = self.screen
        if screen.release_at is not None:  # an error reply held: sent when due
            self.flush()
        if screen.greet_until is not None and now >= screen.greet_until:
            self._pregreet(now, False)
        if self.phase is Phase.TUNNEL:
            if d.expired(d.client, now):
                # Nothing can be said inside TLS: close both sides.
                self.out.event("SG-TUNNEL-TIMEOUT", "TLS tunnel idle past the timeout")
                self.out.emit(CloseServer())
                self.out.emit(CloseClient())
                if self.link.live:
                    self.link.move(Link.LOST)
                self.goto(Trigger.CLOSE)
            return
        if d.expired(d.server, now):
            self.out.event("SG-UPSTREAM-TIMEOUT", "mail server did not answer in time")
            self._link(self.link.failed("timeout"), now)
        elif not self.replies.slots and self.phase in CLIENT_TURN and d.expired(d.client, now):
            self.out.event("SG-CLIENT-TIMEOUT", "client idle past the timeout")
            self.abort_with(replies.CLIENT_TIMEOUT)
        self._pump(now)

    def _tls_done(self, side: Side, now: float) -> None:
        if side is Side.SERVER:
            self.link.tls_started(now)
            return
        if self.phase is not Phase.TLS:  # no handshake was asked for: nothing to do
            return
        # RFC 3207 §4.2: after the handshake nothing learnt in clear holds, on either
        # side. The gateway forgets the client's hello, the extensions it was shown
        # and the envelope, and requires a new EHLO/HELO; the server's session
        # (envelope, hello, any authentication) is ended by a fresh upstream.
        cmds = self.cmds
        cmds.client_tls = True
        self.goto(Trigger.TLS_DONE)
        self._injected(drop=False, report=True)
        cmds.shown = NOTHING_SHOWN
        self.helo = None
        self.ehlo_line = None
        self.envelope.reset()
        cmds.hello = hello(cmds.hello, Greet.TLS_STARTED)
        self.link.reconnect(now)
        self._pump(now)

    def _link(self, decision: After | Secured, now: float) -> None:
        """Apply what the upstream link decided."""
        if decision is After.NOTHING:
            return
        if isinstance(decision, Secured):  # the client's EHLO reply, upstream secured
            self._complete(decision.slot, decision.reply, now)
        elif decision is After.LOST:
            self.upstream_lost(now)
        elif decision is After.CLOSE:  # a 421 greeting, relayed
            self.end(End.CLOSE)
            self.finish_if_done()
        elif decision is After.REFUSE:
            self.abort_with(XCLIENT_REFUSED)
        elif decision is After.SIGNED_OFF:
            self.close_after(replies.UPSTREAM_RENEWED)
        else:  # After.UNAVAILABLE
            self.abort_with(replies.SERVICE_UNAVAILABLE)

    # ----------------------------------------------------------------- replies
    def on_reply(self, reply: Reply, now: float) -> None:
        """A complete reply from the server (called by the link, in order)."""
        if self.out.server:
            self.out.trace_reply(Direction.SERVER_TO_GW, reply.raw)
        link = self.link
        hs = link.handshake
        if link.state is Upstream.GREETING:
            if not self.screen.hold(reply):  # held while the greeting wait runs
                self._link(link.on_greeting(reply, self.helo, self.ehlo_line, now), now)
        elif hs is not None and hs.step is not None:
            self._link(link.on_step_reply(reply, now), now)
        elif self.phase is Phase.DATA:
            # Nothing is owed while the message streams: the server has taken some of
            # it as an end of data (or is broken). Out of step: partial-relay refusal.
            relay = self.relay
            assert relay is not None
            relay.refuse(
                replies.UPSTREAM_DESYNC,
                "SG-UPSTREAM-DESYNC",
                f"mail server replied {reply.code} during message data: out of step, "
                "its connection aborted",
                memoryview(b""),
            )
            relay.abort_upstream = False
            link.abort()
        elif not self.replies.awaiting:
            if reply.code == 421:  # the server is closing the session on its own
                self.upstream_lost(now, closed=reply.raw)
            else:  # a reply nothing asked for would be matched to the next command
                self.out.event("SG-UPSTREAM-UNSOLICITED", f"unexpected reply {reply.code}")
                self._link(link.failed(f"unsolicited reply {reply.code}"), now)
        else:
            slot = self.replies.take_owed()
            if slot.verb == "EHLO" and reply.code == 250:
                self.ehlo_line = slot.raw
                # terminate mode: secure the upstream first, answer after TLS
                if link.secure_first(reply, slot, slot.raw, now):
                    return
            self._complete(slot, reply, now)

    def _complete(self, slot: Slot, reply: Reply, now: float) -> None:
        """Fill ``slot`` with the server's ``reply`` (as the client is to see it)."""
        verb = slot.verb
        cls = reply.code // 100
        raw = reply.raw
        env = self.envelope
        cmds = self.cmds
        if cls == 2 and verb == "AUTH":  # even to a "*": the server's word counts
            self.link.authenticated = True
        if verb in ("HELO", "EHLO") and cls == 2:
            self.helo = slot.raw
            cmds.hello = hello(cmds.hello, Greet.ACCEPTED)
            env.reset()
            if verb == "EHLO":
                raw, cmds.shown, removed = filter_ehlo(
                    reply, self.policy, tls_offer(self.policy, cmds.client_tls)
                )
                if removed:
                    self.out.event(
                        "SG-EHLO-MASKED", f"EHLO keywords removed: {' '.join(removed)}", "mask"
                    )
            else:
                cmds.shown = NOTHING_SHOWN
        elif verb == "MAIL":
            env.in_transaction = cls == 2
            if cls == 2 and self.duplicates is not None:
                self.duplicates.tracker.mail_accepted(slot.raw)
        elif verb == "RCPT" and cls == 2:
            if self.duplicates is not None:
                self.duplicates.tracker.rcpt_accepted(slot.raw)
        elif verb == "RCPT" and cls == 5:
            decision = cmds.invalid_rcpt(now)
            if decision is not None:
                self._apply(decision, now)
        elif slot.cancelled is not None:
            if reply.code == 334:  # still in the exchange after "*": out of step
                self._link(self.link.failed("AUTH not cancelled by '*'"), now)
                return
            raw = replies.bad_auth_bytes(slot.cancelled)
        elif verb == END_OF_DATA_VERB:
            env.in_transaction = False
            if cls == 2:
                self.messages_relayed += 1
            if self.duplicates is not None:
                record = self.duplicates.accepted(reply)
                if record is not None:
                    self.out.emit(record)
        phase = self.phase
        if phase is Phase.WAIT and not self.replies.awaiting:
            phase = self.goto(REPLY_TRIGGERS.get((verb, cls), Trigger.REPLY))
            if phase is Phase.DATA:
                duplicates = self.duplicates
                tracker = duplicates.tracker if duplicates is not None else None
                self.relay = MessageRelay(
                    self.policy, self.out, self.rates, tracker, self.shared_rates
                )
                if tracker is not None:
                    tracker.data_started()
        slot.reply = raw
        if phase is Phase.TUNNEL:
            self.out.event("SG-TLS-PASSTHROUGH", "STARTTLS relayed: inspection ends here")
            self._injected(drop=True, report=True)
            self.deadlines.client = now + self.policy.timeouts.client_idle
        if reply.code == 421 or (verb == "QUIT" and cls == 2):
            self.abort_with(None)
        awaiting = self.replies.awaiting
        self.deadlines.server = (
            now + reply_timeout(self.policy.timeouts, awaiting[0].verb) if awaiting else None
        )
        self.flush()

    # ------------------------------------------------------------- client side
    def _pump(self, now: float) -> None:
        """Consume held client bytes as far as the current phase allows."""
        buffer = self.buffer
        data = buffer.data
        while self.ending is Ending.OPEN or self.ending in READING:
            phase = self.phase
            if phase is Phase.COMMAND or phase is Phase.AUTH:
                draining = self.ending is not Ending.OPEN and self.ending in DRAINING
                if not data and not draining:
                    break  # the usual way out: every line read
                slots = self.replies.slots
                link = self.link
                if link.state is not Upstream.READY or len(slots) >= self.policy.max_pending:
                    if link.state is not Upstream.PARKED or (draining and slots):
                        break
                    if not draining:  # closed while idle: a command needs it again
                        link.reconnect(now)
                        break
                    # parked, draining, nothing owed: the 421 below
                if draining and not self.envelope.in_transaction and not slots:
                    self.abort_with(replies.SHUTTING_DOWN)
                    break
                if not data:
                    break
                cmds = self.cmds
                line = cmds.next_line()
                while line is Then.FLUSH:  # an over-long line skipped and answered
                    self.flush()
                    line = cmds.next_line()
                if not isinstance(line, bytes):
                    if line is not None:  # the over-long line ends the session
                        self._apply(line, now)
                    break
                if phase is Phase.AUTH:
                    self._apply(cmds.auth_response(line, now), now)
                elif self._screened(
                    self.screen.command(
                        line, len(buffer), bool(self.replies.slots), "PIPELINING" in cmds.shown
                    )
                ):
                    self.flush()
                else:
                    self._apply(cmds.command(line, now), now)
            elif phase is Phase.DATA:
                if not data:
                    break
                self._data(buffer.take(), now)
            elif phase is Phase.BDAT:
                if not self.cmds.drain_bdat():
                    break
                self.goto(Trigger.BDAT_DRAINED)
                self.flush()
            else:  # WAIT, QUIT, TLS, TUNNEL, CLOSED: nothing is read
                break
        if not self.replies.slots:  # else finish_if_done() has nothing to do
            self.finish_if_done()

    def _data(self, chunk: bytes, now: float) -> None:
        """Relay one chunk of message data; at its end, owe the final reply."""
        relay = self.relay
        assert relay is not None
        end = relay.feed(chunk, now)
        if relay.abort_upstream:  # refused: the server must never see the terminator
            relay.abort_upstream = False
            self.link.abort()
        if end < 0:
            if end == DROPPED:  # a check dropped the connection: say why, read no more
                assert relay.refusal is not None
                self.relay = None
                self.goto(Trigger.MESSAGE_DROPPED)
                self.close_after(relay.refusal)
            elif end == RESET:
                self.reset_both()
            elif end == SPLIT_EOD:  # nothing more is read, no reply comes
                self.relay = None
                self.goto(Trigger.SPLIT_EOD_BUG)
                self.buffer.clear()
            return
        self.relay = None
        self.goto(Trigger.END_OF_DATA)
        self.envelope.rcpt_count = 0
        self.message_octets += relay.size
        if self.out.size:
            self.out.emit(Trace(Direction.CLIENT_TO_GW, relay.message_id, size=relay.size))
        if relay.refusal is not None:  # the end of the transaction, as a server's reply is
            self.envelope.in_transaction = False
            self.messages_refused += 1
            self.replies.local(END_OF_DATA_VERB, relay.refusal)
            self.flush()
            self._link(self.link.renew(now), now)
        else:
            slot = self.replies.pending(END_OF_DATA_VERB)
            if relay.deferred and self.shared_rates is not None:
                self.goto(Trigger.RATE_HOLD)  # the dot waits for the counts
                self.out.emit_any(self.shared_rates.hold_message(slot, relay.deferred))
            elif not self.dedupe_lookup(slot):
                self.replies.expect(slot)
            self.deadlines.server = now + self.policy.timeouts.data_end
        if end < len(chunk):
            self.buffer.prepend(chunk[end:])

    def dedupe_lookup(self, slot: Slot) -> bool:
        """At the end of data with ``[dedupe]`` on: True while the final dot is held
        for the store's answer (else any held octets went to the server)."""
        duplicates = self.duplicates
        if duplicates is None:
            return False
        ask = duplicates.lookup(slot)
        if isinstance(ask, DedupeLookup):
            self.goto(Trigger.DEDUPE_LOOKUP)
            self.out.emit(ask)
            return True
        if ask:
            self.out.emit(ToServer(ask))
        return False

    def _dedupe_answer(self, decision: Release | Suppress | None, now: float) -> None:
        """Apply the duplicates part's decision on the store's answer."""
        if decision is None:
            return
        if self.phase is Phase.WAIT:
            self.goto(Trigger.DEDUPE_ANSWER)
        slot = decision.slot
        if slot.reply is not None or self.link.state is not Upstream.READY:
            return  # the server was lost meanwhile: the client has its 4xx
        if isinstance(decision, Release):
            self.out.emit(ToServer(decision.held))
            self.replies.expect(slot)
            self.deadlines.server = now + self.policy.timeouts.data_end
            return
        self.out.event(
            "SG-DEDUPE-SUPPRESSED",
            f"copy of a message the server accepted as {decision.queue}: not relayed again",
            "suppress",
        )
        slot.reply = decision.reply
        self.envelope.in_transaction = False
        self.flush()
        self._link(self.link.renew(now), now)  # the server never sees this terminator

    # ------------------------------------------------------ shared rate limits
    def _rate_answer(self, rates: SharedRates, allowed: bool | None, now: float) -> None:
        """Apply what the shared-rates part decided on the driver's count."""
        if self.ending not in READING:  # closing
            rates.clear()
            return
        count = rates.answer(allowed)
        if count is None:
            return
        if not rates.waiting and self.phase is Phase.RATE:
            self.goto(Trigger.RATE_ANSWER)
        f = count.finding
        if allowed is None:
            self.out.event(f.event_id, f.message + " (rate not counted: store unavailable)", "log")
        elif allowed:
            self.out.event(f.event_id, f.message, "log")
        decision = count.decision
        slot = count.slot
        if decision is RateDecision.FORWARD:
            assert slot is not None
            if self.link.state is not Upstream.READY:
                # The server was lost meanwhile: as for a command already relayed.
                self.abort_with(replies.UPSTREAM_LOST)
            else:
                cmds = self.cmds
                refused = cmds.params_refused(count.verb, count.params, slot)
                self._apply(refused or cmds.forward(count.verb, count.line, now, slot), now)
        elif decision is RateDecision.REFUSE:
            assert slot is not None
            self.out.event(f.event_id, f.message, "reject")
            self.cmds.refused += 1
            self.cmds.count(count.verb, "refused")
            slot.reply = f.reply
            self.flush()
        elif decision is RateDecision.BLOCK:
            self.out.event(f.event_id, f.message, "reject")
            self.cmds.refused += 1
            self.envelope.rcpt_blocked = True
        elif decision is RateDecision.REFUSE_MESSAGE:
            assert slot is not None
            if slot.reply is None and self.link.state is Upstream.READY:
                # Over the limit at the end of data: the server never sees the dot.
                self.out.event(f.event_id, f.message + ": message refused", "reject")
                self.messages_refused += 1
                self.envelope.in_transaction = False
                slot.reply = f.reply
                self.flush()
                self._link(self.link.renew(now), now)
        elif decision is RateDecision.RELEASE:
            assert slot is not None
            if slot.reply is None and self.link.state is Upstream.READY:
                self._release_dot(slot, count.held, now)
        self.out.emit_any(rates.next_check())

    def _release_dot(self, slot: Slot, held: bytes, now: float) -> None:
        """The counts let the message through: on to the duplicate lookup, or the
        held octets to the server, whose reply fills ``slot``."""
        self.deadlines.server = now + self.policy.timeouts.data_end
        duplicates = self.duplicates
        if duplicates is not None and self.phase is Phase.COMMAND:
            duplicates.tracker.held = held  # the lookup holds (or sends) it now
            if self.dedupe_lookup(slot):
                return
        elif held:
            self.out.emit(ToServer(held))
        self.replies.expect(slot)

    @property
    def commands(self) -> dict[tuple[str, str], int]:
        """Commands counted so far, by (verb, "forwarded"|"refused"|"accepted"); a copy."""
        return self.cmds.counts()

    @property
    def commands_refused(self) -> int:
        return self.cmds.refused

    # ------------------------------------------------------ owing and closing
    def _apply(self, then: Then | Close, now: float) -> None:
        """Apply what the commands part decided for a line (or a server reply)."""
        if then is Then.NOTHING:
            return
        if then is Then.FLUSH:
            self.flush()
        elif then is Then.HOLD:
            self.goto(Trigger.HOLD)
        elif then is Then.AUTH_LINE:
            self.goto(Trigger.AUTH_LINE)
        elif then is Then.QUIT:
            self.goto(Trigger.QUIT)
        elif then is Then.BDAT:  # the chunk is drained as the phase BDAT reads
            self.goto(Trigger.BDAT)
        elif then is Then.TLS_OFFERED:
            self.goto(Trigger.TLS_OFFERED)
            self.flush()
        elif then is Then.RATE_HOLD:
            self.goto(Trigger.RATE_HOLD)
        elif then is Then.RATE_AFTER:  # between commands, the next ones wait
            if self.phase is Phase.COMMAND:
                self.goto(Trigger.RATE_HOLD)
        elif then is Then.RESET:
            self.reset_both()
        elif isinstance(then, Close):
            if then.abort:
                self.abort_with(then.reply)
            else:
                self.close_after(then.reply)

    def close_after(self, reply: bytes) -> None:
        """Owe ``reply`` after every earlier reply, read nothing more, then close."""
        self.replies.local("", reply)
        self.end(End.CLOSE)
        self.flush()

    def abort_with(self, reply: bytes | None) -> None:
        """Answer the first unanswered slot with ``reply`` (or nothing), drop the
        rest, and close once everything before it is flushed."""
        self.replies.cut(reply)
        self.end(End.CLOSE)
        self.flush()

    def reset_both(self) -> None:
        self.end(End.CLOSE)
        self.out.emit(CloseServer(abort=True))
        self.out.emit(CloseClient(reset=True))
        if self.link.live:
            self.link.move(Link.LOST)
        self.goto(Trigger.CLOSE)
        self.replies.clear()

    def flush(self) -> None:
        """Send the filled slots at the head of the pipeline, in order."""
        replies = self.replies
        slots = replies.slots
        caught: Caught | None = None
        screen = self.screen
        while slots and slots[0].reply is not None:
            if screen.policy.error_delay:
                at = screen.tarpit(slots[0].reply)
                if at is not None:  # held: the timer sends it, and what waits behind it
                    d = self.deadlines
                    if d.timer is None or at < d.timer:
                        d.timer = at
                        self.out.emit(SetTimer(at))
                    break
            slot = replies.take_ready()
            assert slot.reply is not None
            self.out.to_client(slot.reply)
            caught = screen.replied(slot.reply) or caught
            self.deadlines.client = None  # the client's turn starts now
            if slot.verb == TLS_SLOT:
                self._injected(drop=True, report=False)
                self.out.emit(StartTls(Side.CLIENT))
        if caught is not None and self.ending in READING:  # at the error limit
            self._screened(caught)
            return
        self.finish_if_done()

    # ------------------------------------------------------------ protocol screens
    def _pregreet(self, now: float, passed: bool | None) -> None:
        """The greeting wait (core/screen.py): at the start (``passed`` None) the
        first greeting line, the timer and the store lookup; then, when the store
        says the address passed or the wait is over, the server's greeting."""
        screen = self.screen
        if passed is None:
            at = screen.greet()
            self.out.to_client(b"220-%s ESMTP\r\n" % self.policy.hostname.encode())
            self.out.emit(PassLookup())
            d = self.deadlines
            if d.timer is None or at < d.timer:
                d.timer = at
                self.out.emit(SetTimer(at))
            return
        if screen.greet_until is None or (not passed and now < screen.greet_until):
            return  # released already, or the wait goes on
        held = screen.release()
        if passed:
            self.out.event(
                "SG-SCREEN-PREGREET-PASSED", "address waited for a greeting before: no wait", "pass"
            )
        elif not screen.talked:
            self.out.emit(PassRecord(self.policy.screen.pass_ttl))
        link = self.link
        if held is not None and link.state is Upstream.GREETING:
            self._link(link.on_greeting(held, self.helo, self.ehlo_line, now), now)
        self._pump(now)

    def _screened(self, caught: Caught | None) -> bool:
        """Apply a protocol screen's verdict (core/screen.py): True when the input it
        concerns is not read on (refused, or the session closes)."""
        if caught is None:
            return False
        action = caught.action
        if caught.first:
            self.out.event(caught.event_id, caught.message, action.value)
        if action is ScreenAction.LOG:
            return self._screened(caught.then)
        if action is ScreenAction.REJECT:  # a command line sent ahead: refused in place
            self.cmds.refused += 1
            self.replies.local("", caught.reply)
        elif caught.at_once:
            self.out.to_client(caught.reply)
            self.buffer.clear()
            self.abort_with(None)
        else:
            self.close_after(caught.reply)
        return True

    def _injected(self, drop: bool, report: bool) -> None:
        """Bytes the client sent after STARTTLS but before TLS are plaintext injected
        into the encrypted session (CVE-2011-0411 class): ``drop`` discards those held,
        however they were segmented (those arriving while the handshake is pending are
        counted as they come); ``report`` logs the count once the handshake is done."""
        if drop:
            self.injected += len(self.buffer)
            self.buffer.clear()
        if report and self.injected:
            self.out.event(
                "SG-TLS-INJECTION",
                f"{self.injected} octets pipelined after STARTTLS discarded",
                "reject",
            )
            self.injected = 0

    def finish_if_done(self) -> None:
        if self.phase is Phase.CLOSED or self.replies.slots:
            return
        # After EOF, finish once nothing owed remains and nothing that arrived before
        # the EOF can still be processed: no complete command, no message bytes.
        ending = self.ending
        if ending is Ending.OPEN:  # the usual case, at every flush: nothing ends
            return
        phase = self.phase
        eof_done = (
            ending in EOF_SEEN
            and phase is not Phase.WAIT
            and (not self.buffer.data if phase is Phase.DATA else not self.buffer.has_line())
        )
        if ending not in READING or eof_done:
            if self.link.live:
                # Mid-message the server must not take what it has as a message.
                self.out.emit(CloseServer(abort=phase is Phase.DATA))
                self.link.move(Link.LOST)
            self.out.emit(CloseClient())
            self.goto(Trigger.CLOSE)

    def upstream_lost(self, now: float, closed: bytes | None = None) -> None:
        """The upstream failed or timed out, or the server closed the connection
        (``closed``: its 421 when it said one first, else empty): what the client
        is told. Closed between transactions, nothing is lost: the client sees
        nothing and its next command opens a fresh connection."""
        link = self.link
        was = link.state
        if closed is not None:
            if (
                was is Upstream.READY
                and self.phase is Phase.COMMAND
                and not self.replies.awaiting
                and not self.envelope.in_transaction
                and not link.authenticated
            ):
                self.out.event(
                    "SG-UPSTREAM-IDLE-CLOSED",
                    "mail server closed the connection between transactions: "
                    "the next command opens a fresh one",
                    "log",
                )
                link.park(said_421=bool(closed))
                return
            if closed:  # its 421 inside a transaction: relayed, then close
                self.close_after(closed)
                return
        if link.live:
            link.move(Link.LOST)
        self.deadlines.server = None
        before_greeting = was is Upstream.CONNECTING or was is Upstream.GREETING
        if before_greeting and link.failover(f"failed while {was.value}", now):
            return  # the next upstream server: the client has seen nothing of this one
        if not link.greeted:
            self.out.to_client(replies.SERVICE_UNAVAILABLE)
            self.abort_with(None)
        elif was is not Upstream.READY:
            self._link(link.reconnect_failed(f"upstream lost while {was.value}"), now)
        elif self.phase is Phase.TUNNEL:
            self.abort_with(None)  # nothing can be said inside the client's TLS
        elif self.phase is Phase.DATA:
            assert self.relay is not None
            self.out.event("SG-UPSTREAM-LOST", "mail server lost during message data")
            self.relay.refusal = replies.MESSAGE_UPSTREAM_LOST
        elif (owed := self.replies.next_owed()) is not None and owed.verb == END_OF_DATA_VERB:
            self.out.event("SG-UPSTREAM-LOST", "mail server lost before its final reply")
            self.replies.take_owed().reply = replies.MESSAGE_UPSTREAM_LOST
            self.envelope.in_transaction = False
            if self.replies.owed_by_server:
                self.abort_with(replies.UPSTREAM_LOST)
            else:
                self._link(link.renew(now), now)
            self.flush()
        else:
            self.abort_with(replies.UPSTREAM_LOST)
