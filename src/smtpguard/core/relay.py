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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from smtpguard.core import replies
from smtpguard.core.actions import Direction, ToServer, Trace
from smtpguard.core.checks import Finding
from smtpguard.core.data import DataScanner, Normalizer
from smtpguard.core.grammar import END_OF_DATA
from smtpguard.core.message import MessageInspector
from smtpguard.core.policy import Smuggling, Verdict

if TYPE_CHECKING:
    from smtpguard.core.session import Session

# What feed() found, besides an end-of-data offset (>= 0).
MORE: Final = -1  # the message goes on
STOPPED: Final = -2  # the session stopped reading (a drop, a reset, the PIX split-EOD bug)


class MessageRelay:
    __slots__ = (
        "_held_cr", "_id", "_inspector", "_normalizer", "_s", "_scanner", "deferred", "refusal"
    )  # fmt: skip

    def __init__(self, session: Session) -> None:
        self._s = session
        policy = session.policy
        self._scanner = DataScanner()
        self._normalizer = Normalizer() if policy.smuggling is Smuggling.NORMALIZE else None
        self._inspector: MessageInspector | None = MessageInspector(
            policy.checks, normalize=self._normalizer is not None, want_id=session.out.size
        )
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
        """Relay one chunk; the offset just past the end of data, or MORE/STOPPED."""
        scanner = self._scanner
        scan = scanner.scan(chunk)
        stop = len(chunk) if scan.end < 0 else scan.end
        s = self._s
        if s.policy.emulation.split_eod_bug and 0 <= scan.end < len(END_OF_DATA) < scanner.size:
            self._split_eod_bug()  # the terminator began in an earlier segment
            return STOPPED
        held, self._held_cr = self._held_cr, False
        body = chunk if stop == len(chunk) else chunk[:stop]
        duplicates = s.duplicates
        if duplicates is not None:
            duplicates.tracker.feed(body)  # the digest is of the octets as received
        if self.refusal is None and not self._inspect(body, now):
            return STOPPED
        normalizer = self._normalizer
        if self.refusal is not None:
            pass  # refused: read and drop to the client's end of data
        elif normalizer is not None:
            self._normalized(normalizer, body, scan.end >= 0)
        elif scan.invalid_at >= 0:
            if held and scan.invalid_at > 0:
                s.out.emit(ToServer(b"\r"))
            self.refuse(
                replies.message_rejected(scan.reason),
                "SG-DATA-BAD-BYTES",
                f"{scan.reason} in message data: message refused",
                memoryview(chunk)[: scan.invalid_at],
            )
        else:
            if held:
                s.out.emit(ToServer(b"\r"))
            send = stop
            if scan.end < 0 and chunk.endswith(b"\r"):
                send -= 1
                self._held_cr = True
            if scan.end >= 0 and (duplicates is not None or self.deferred):
                self._hold_dot(memoryview(chunk)[:send])
            elif send == len(chunk):
                s.out.emit(ToServer(chunk))
            elif send:
                s.out.emit(ToServer(memoryview(chunk)[:send]))
        return scan.end

    def refuse(self, reply: bytes, event_id: str, message: str, clean: memoryview) -> None:
        """Refuse the message part-way: the server never sees the terminator."""
        s = self._s
        s.out.event(event_id, message, "reject")
        self.refusal = reply
        if len(clean):
            s.out.emit(ToServer(clean))
        s.link.abort()

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
        out = normalizer.feed(part, final)
        s = self._s
        if normalizer.changed and not was:
            s.out.event("SG-DATA-NORMALIZED", "bare line ends rewritten to CRLF", "log")
        if final and (s.duplicates is not None or self.deferred):
            self._hold_dot(out)
        elif out:
            s.out.emit(ToServer(out))

    def _hold_dot(self, data: bytes | memoryview) -> None:
        """The end of data: the terminator's last octets wait for the shared rate
        counts, else for the duplicate lookup."""
        s = self._s
        if self.deferred and s.shared_rates is not None:
            s.shared_rates.hold_dot(data)
        elif s.duplicates is not None:
            part = s.duplicates.hold_dot(data)
            if len(part):
                s.out.emit(ToServer(part))

    def _inspect(self, part: bytes, now: float) -> bool:
        """Content checks on one chunk's message bytes, verdicts applied; False when
        the session stops reading (drop or reset)."""
        inspector = self._inspector
        if inspector is None:
            return True
        s = self._s
        for f in inspector.feed(part):
            verdict = f.verdict
            if verdict is Verdict.RATE_LIMIT:
                if s.shared_rates is not None:
                    self.deferred.append(f)  # counted at the end of data
                    continue
                verdict = Verdict.LOG if s.rates.allow(f, now) else Verdict.REJECT
            if verdict is Verdict.LOG:
                s.out.event(f.event_id, f.message, "log")
            elif verdict is Verdict.REJECT:
                self.refuse(f.reply, f.event_id, f.message + ": message refused", memoryview(b""))
                self._id = inspector.message_id
                self._inspector = None
                return True
            elif verdict is Verdict.DROP:
                s.out.event(f.event_id, f.message, verdict.value)
                self.refusal = replies.dropped(f.message)
                s.link.abort()
                s.drop_message(self.refusal)
                return False
            else:
                s.out.event(f.event_id, f.message, verdict.value)
                s.reset_both()
                return False
        return True

    def _split_eod_bug(self) -> None:
        """CSCds90792, reproduced for labs: an end-of-data sequence split over more
        than one received segment is never passed on. The server waits for the rest,
        the client for a reply that never comes: both time out, the sender re-sends."""
        s = self._s
        s.out.event(
            "SG-EMULATE-SPLIT-EOD", "PIX emulation: split end-of-data swallowed (CSCds90792)", "log"
        )
        if s.out.size:  # the message as the client sent it, for the protocol log
            s.out.emit(Trace(Direction.CLIENT_TO_GW, self.message_id, size=self.size))
        s.swallow_rest()
