"""The DATA phase: relay chunks as they stream, watch framing and content.

Chunks are forwarded as received while :class:`~smtpguard.core.data.DataScanner`
finds the end of data on the raw stream and :class:`~smtpguard.core.message.
MessageInspector` runs the content checks. A message found invalid part-way is
never completed upstream: its connection is aborted without the terminator, the rest
is read and dropped to the client's real end of data, the client gets a 5xx naming
the reason, and a fresh upstream connection carries on.
"""

from __future__ import annotations

from smtpguard.core import replies
from smtpguard.core.actions import CloseServer, Direction, ToServer, Trace
from smtpguard.core.dedupe import DedupeLookup, DedupeRecord, already_accepted, queue_id
from smtpguard.core.envelope import EnvelopeChecks
from smtpguard.core.grammar import END_OF_DATA, Reply
from smtpguard.core.policy import Verdict
from smtpguard.core.state import END_OF_DATA_VERB, Phase, Slot, Upstream


class DataPhase(EnvelopeChecks):
    def _data(self, chunk: bytes, now: float) -> None:
        """Relay one chunk of message data; at the end, queue the final reply."""
        scanner = self._scanner
        assert scanner is not None
        scan = scanner.scan(chunk)
        stop = len(chunk) if scan.end < 0 else scan.end
        if self._emulation.split_eod_bug and 0 <= scan.end < len(END_OF_DATA) < scanner.size:
            self._split_eod_bug()  # the terminator began in an earlier segment
            return
        # A CR ending a chunk is held back until the next byte shows it is part of a
        # CRLF, so the server gets exactly the bytes before the first bad one,
        # whatever the segmentation.
        held, self._held_cr = self._held_cr, False
        body = chunk if stop == len(chunk) else chunk[:stop]
        if self._dedupe is not None:
            self._dedupe.feed(body)  # the digest is of the octets as received
        if self._refusal is None:
            self._inspect(body, now)
        if self._closing or self.phase is Phase.CLOSED:  # dropped or reset: nothing more
            return
        normalizer = self._normalizer
        if self._refusal is None and normalizer is not None:
            self._normalized(body, scan.end >= 0)
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
            if scan.end >= 0 and self._dedupe is not None:
                self._hold_dot(memoryview(chunk)[:send])
            elif send == len(chunk):
                self._emit(ToServer(chunk))
            elif send:
                self._emit(ToServer(memoryview(chunk)[:send]))
        if scan.end < 0:
            return
        self._scanner = None
        self._normalizer = None
        self._inspector = None
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
            slot = Slot(END_OF_DATA_VERB)
            self._slots.append(slot)
            if not self._dedupe_lookup(slot):
                self._awaiting.append(slot)
            self._server_deadline = now + self.policy.timeouts.data_end
        if stop < len(chunk):
            self._cbuf[:0] = chunk[stop:]

    def _split_eod_bug(self) -> None:
        """CSCds90792, reproduced for labs: an end-of-data sequence split over more
        than one received segment is never passed on. The server waits for the rest,
        the client for a reply that never comes: both time out, the sender re-sends."""
        self._policy_event(
            "SG-EMULATE-SPLIT-EOD", "PIX emulation: split end-of-data swallowed (CSCds90792)", "log"
        )
        self._held_cr = False
        self._scanner = None
        self._normalizer = None
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
                self._normalizer = None
                self.phase = Phase.COMMAND
                self._close_after(self._refusal)
                return
            else:
                self._policy_event(f.event_id, f.message, verdict.value)
                self._reset_both()
                return

    def _normalized(self, part: bytes, final: bool) -> None:
        """Smuggling ``normalize`` mode: CRLF line ends and stuffed dots, on bytes
        whose end of data was already fixed on the raw stream (see ``Normalizer``).
        A NUL is refused as in ``reject`` mode: it is not a line end to repair."""
        normalizer = self._normalizer
        assert normalizer is not None
        if b"\x00" in part:
            self._refuse_message(
                replies.message_rejected("NUL"),
                "SG-DATA-BAD-BYTES",
                "NUL in message data: message refused",
                memoryview(b""),
            )
            return
        was = normalizer.changed
        out = normalizer.feed(part, final)
        if normalizer.changed and not was:
            self._policy_event("SG-DATA-NORMALIZED", "bare line ends rewritten to CRLF", "log")
        if final and self._dedupe is not None:
            self._hold_dot(out)
        elif out:
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

    # -- duplicate suppression (core/dedupe.py) ----------------------------------------
    def _hold_dot(self, data: bytes | memoryview) -> None:
        """Relay the message's last bytes but the end of its terminator."""
        assert self._dedupe is not None
        part = self._dedupe.hold(data)
        if len(part):
            self._emit(ToServer(part))

    def _dedupe_lookup(self, slot: Slot) -> bool:
        """At the client's end of data: ask the driver whether this transaction was
        accepted before; True while the final dot is held for its answer (client
        input waits too, so nothing overtakes the dot)."""
        tx = self._dedupe
        if tx is None:
            return False
        tx.sent_key = None
        key = tx.end_key()
        if key is None:
            if tx.held:
                self._emit(ToServer(tx.held))
                tx.held = b""
            return False
        tx.sent_key = key
        self._dedupe_slot = slot
        self.phase = Phase.WAIT
        self._emit(DedupeLookup(key))
        return True

    def _dedupe_answer(self, queue: str | None, now: float) -> None:
        slot, self._dedupe_slot = self._dedupe_slot, None
        tx = self._dedupe
        if slot is None or tx is None:
            return
        held, tx.held = tx.held, b""
        if self.phase is Phase.WAIT:
            self.phase = Phase.COMMAND
        if slot.reply is not None or self.upstream is not Upstream.READY:
            return  # the server was lost meanwhile: the client has its 4xx
        if queue is None:
            self._emit(ToServer(held))
            self._awaiting.append(slot)
            self._server_deadline = now + self.policy.timeouts.data_end
            return
        tx.sent_key = None
        self._policy_event(
            "SG-DEDUPE-SUPPRESSED",
            f"copy of a message the server accepted as {queue}: not relayed again",
            "suppress",
        )
        slot.reply = already_accepted(queue)
        self._in_transaction = False
        self._flush()
        self._reconnect(now)  # the server never sees this copy's terminator

    def _dedupe_accepted(self, reply: Reply) -> None:
        """The server's final reply to a message: only a 250 records its key."""
        assert self._dedupe is not None
        key, self._dedupe.sent_key = self._dedupe.sent_key, None
        if key is not None and reply.code == 250:
            self._emit(DedupeRecord(key, queue_id(reply.text) or key[:16]))
