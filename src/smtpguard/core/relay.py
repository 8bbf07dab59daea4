"""One message in the DATA phase: relay chunks as they stream, watch framing and
content.

Chunks are forwarded as received while :class:`~smtpguard.core.data.DataScanner`
finds the end of data on the raw stream and :class:`~smtpguard.core.message.
MessageInspector` runs the content checks. A message found invalid part-way is
never completed upstream: its connection is aborted without the terminator, the rest
is read and dropped to the client's real end of data, and the client gets a 5xx
naming the reason (``refusal``); the session then opens a fresh upstream.

A CR ending a chunk is held back until the next byte shows it is part of a CRLF, so
the server gets exactly the bytes before the first bad one, whatever the
segmentation. In ``normalize`` mode the :class:`~smtpguard.core.data.Normalizer`
holds what it must instead.

The relay knows nothing of the session. It is fed the policy, the action list it
relays into, the session's rate table and, when they are on, the duplicate tracker
and the shared-rates part (which hold the terminator's last octets); what it
decides for the session comes back from :meth:`MessageRelay.feed`: the end of data,
or that reading stops (``DROPPED``, ``RESET``, ``SPLIT_EOD``), and ``abort_upstream``
when a refusal means the server must never see the terminator.
"""

from __future__ import annotations

from typing import Final

from smtpguard.core import replies
from smtpguard.core.actions import Direction, ToServer, Trace
from smtpguard.core.checks import Finding, Rates
from smtpguard.core.data import DataScanner, Normalizer
from smtpguard.core.dedupe import Tracker
from smtpguard.core.grammar import END_OF_DATA
from smtpguard.core.message import MessageInspector
from smtpguard.core.output import Output
from smtpguard.core.policy import Policy, Smuggling, Verdict
from smtpguard.core.ratelimit import SharedRates

# What feed() found, besides an end-of-data offset (>= 0): each but MORE stops the
# session reading the message.
MORE: Final = -1  # the message goes on
DROPPED: Final = -2  # a check drops the connection: say ``refusal``, read nothing more
RESET: Final = -3  # a check resets both connections
SPLIT_EOD: Final = -4  # the PIX split-EOD bug (emulation): nothing more is read


class MessageRelay:
    __slots__ = (
        "_held_cr", "_id", "_inspector", "_normalizer", "_out", "_policy", "_rates",
        "_scanner", "_shared", "_tracker", "abort_upstream", "deferred", "refusal",
    )  # fmt: skip

    def __init__(
        self,
        policy: Policy,
        out: Output,
        rates: Rates,
        tracker: Tracker | None = None,
        shared: SharedRates | None = None,
    ) -> None:
        self._policy = policy
        self._out = out
        self._rates = rates  # rate limits counted in the session
        self._tracker = tracker  # [dedupe]: the digest, and the held dot
        self._shared = shared  # rate limits counted in a shared store
        self._scanner = DataScanner()
        self._normalizer = Normalizer() if policy.smuggling is Smuggling.NORMALIZE else None
        self._inspector: MessageInspector | None = MessageInspector(
            policy.checks, normalize=self._normalizer is not None, want_id=out.size
        )
        self.abort_upstream = False  # refused: the session drops the upstream now
        self._held_cr = False
        self._id = ""  # the Message-ID read before the inspector was let go
        self.refusal: bytes | None = None  # the reply owed at the end of a refused message
        # Shared rate-limit findings, counted at the end of data (core/ratelimit.py).
        self.deferred: list[Finding] = []

    @property
    def message_id(self) -> str:
        """The message's Message-ID when the protocol log records sizes, else ``""``."""
        inspector = self._inspector
        return inspector.message_id if inspector is not None else self._id

    @property
    def size(self) -> int:
        """Message octets seen so far, terminator included."""
        return self._scanner.size

    def feed(self, chunk: bytes, now: float) -> int:
        """Relay one chunk; the offset just past the end of data, or MORE, or why
        reading stops (DROPPED, RESET, SPLIT_EOD)."""
        scanner = self._scanner
        scan = scanner.scan(chunk)
        stop = len(chunk) if scan.end < 0 else scan.end
        out = self._out
        if self._policy.emulation.split_eod_bug and 0 <= scan.end < len(END_OF_DATA) < scanner.size:
            self._split_eod_bug()  # the terminator began in an earlier segment
            return SPLIT_EOD
        held, self._held_cr = self._held_cr, False
        body = chunk if stop == len(chunk) else chunk[:stop]
        tracker = self._tracker
        if tracker is not None:
            tracker.feed(body)  # the digest is of the octets as received
        if self.refusal is None:
            stopped = self._inspect(body, now)
            if stopped != MORE:
                return stopped
        normalizer = self._normalizer
        if self.refusal is not None:
            pass  # refused: read and drop to the client's end of data
        elif normalizer is not None:
            self._normalized(normalizer, body, scan.end >= 0)
        elif scan.invalid_at >= 0:
            if held and scan.invalid_at > 0:
                out.emit(ToServer(b"\r"))
            self.refuse(
                replies.message_rejected(scan.reason),
                "SG-DATA-BAD-BYTES",
                f"{scan.reason} in message data: message refused",
                memoryview(chunk)[: scan.invalid_at],
            )
        else:
            if held:
                out.emit(ToServer(b"\r"))
            send = stop
            if scan.end < 0 and chunk.endswith(b"\r"):
                send -= 1
                self._held_cr = True
            if scan.end >= 0 and (tracker is not None or self.deferred):
                self._hold_dot(memoryview(chunk)[:send])
            elif send == len(chunk):
                out.emit(ToServer(chunk))
            elif send:
                out.emit(ToServer(memoryview(chunk)[:send]))
        return scan.end

    def refuse(self, reply: bytes, event_id: str, message: str, clean: memoryview) -> None:
        """Refuse the message part-way: the server never sees the terminator (the
        session aborts the upstream: ``abort_upstream``)."""
        out = self._out
        out.event(event_id, message, "reject")
        self.refusal = reply
        if len(clean):
            out.emit(ToServer(clean))
        self.abort_upstream = True

    def _normalized(self, normalizer: Normalizer, part: bytes, final: bool) -> None:
        """``normalize`` mode: CRLF line ends and stuffed dots, on bytes whose end of
        data was fixed on the raw stream. A NUL is refused as in ``reject`` mode."""
        if 0x00 in part:  # a byte's value: see grammar.check_line_bytes
            self.refuse(
                replies.message_rejected("NUL"),
                "SG-DATA-BAD-BYTES",
                "NUL in message data: message refused",
                memoryview(b""),
            )
            return
        was = normalizer.changed
        data = normalizer.feed(part, final)
        if normalizer.changed and not was:
            self._out.event("SG-DATA-NORMALIZED", "bare line ends rewritten to CRLF", "log")
        if final and (self._tracker is not None or self.deferred):
            self._hold_dot(data)
        elif data:
            self._out.emit(ToServer(data))

    def _hold_dot(self, data: bytes | memoryview) -> None:
        """The end of data: the terminator's last octets wait for the shared rate
        counts, else for the duplicate lookup."""
        part = data
        if self.deferred and self._shared is not None:
            part = self._shared.hold_dot(data)
        elif self._tracker is not None:
            part = self._tracker.hold(data)
        if len(part):
            self._out.emit(ToServer(part))

    def _inspect(self, part: bytes, now: float) -> int:
        """Content checks on one chunk's message bytes: MORE, or why the session stops
        reading (DROPPED, RESET)."""
        inspector = self._inspector
        if inspector is None:
            return MORE
        out = self._out
        for f in inspector.feed(part):
            verdict = f.verdict
            if verdict is Verdict.RATE_LIMIT:
                if self._shared is not None:
                    self.deferred.append(f)  # counted at the end of data
                    continue
                verdict = Verdict.LOG if self._rates.allow(f, now) else Verdict.REJECT
            if verdict is Verdict.LOG:
                out.event(f.event_id, f.message, "log")
            elif verdict is Verdict.REJECT:
                self.refuse(f.reply, f.event_id, f.message + ": message refused", memoryview(b""))
                self._id = inspector.message_id
                self._inspector = None
                return MORE
            elif verdict is Verdict.DROP:
                out.event(f.event_id, f.message, verdict.value)
                self.refusal = replies.dropped(f.message)
                self.abort_upstream = True
                return DROPPED
            else:
                out.event(f.event_id, f.message, verdict.value)
                return RESET
        return MORE

    def _split_eod_bug(self) -> None:
        """CSCds90792, reproduced for labs: an end-of-data sequence split over more
        than one received segment is never passed on. The server waits for the rest,
        the client for a reply that never comes: both time out, the sender re-sends."""
        out = self._out
        out.event(
            "SG-EMULATE-SPLIT-EOD", "PIX emulation: split end-of-data swallowed (CSCds90792)", "log"
        )
        if out.size:  # the message as the client sent it, for the protocol log
            out.emit(Trace(Direction.CLIENT_TO_GW, self.message_id, size=self.size))
