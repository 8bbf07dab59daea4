"""Streaming scan of the DATA phase: end-of-data detection and framing checks.

Theory of operation
-------------------
The message is relayed chunk by chunk exactly as received; this scanner only looks.
End of data is ``CRLF . CRLF`` on the raw byte stream (RFC 5321 §4.1.1.4). The 354
reply counts as a line start, so the scan begins with a virtual ``CRLF`` in the tail.
The last four bytes seen are kept as ``tail``; a terminator that straddles chunks is
found by searching ``tail + chunk[:4]``, everything else with one ``bytes.find`` over
the chunk. That makes detection independent of segmentation, down to one byte per
chunk, at C speed and without rescanning.

Framing checks run over the message bytes only (up to and including the terminator):
a CR not followed by LF, an LF not preceded by CR, or a NUL makes the message invalid
(the SMTP smuggling class: a server that accepts ``LF . LF`` would see a different
end of data than we do). The fast path counts CR, LF and CRLF with ``bytes.count``;
only an invalid chunk is searched for the offending offset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpguard.core.grammar import END_OF_DATA

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")


@dataclass(frozen=True, slots=True)
class DataScan:
    """Result of scanning one chunk.

    ``end``: offset just past the terminator in this chunk, or -1 if not yet seen.
    ``invalid_at``: offset of the first forbidden byte in this chunk (-1: none), and
    ``reason`` its name. A bare CR that ended the previous chunk is reported at 0.
    """

    end: int
    invalid_at: int = -1
    reason: str = ""


class DataScanner:
    """Incremental scanner for one message. Create a new one per DATA."""

    __slots__ = ("_tail", "size")

    def __init__(self) -> None:
        self._tail = b"\r\n"  # the 354 reply counts as a line start
        self.size = 0  # message octets seen, terminator included

    def scan(self, chunk: bytes) -> DataScan:
        end = self._find_end(chunk)
        body = chunk if end < 0 else chunk[:end]
        pending_cr = self._tail.endswith(b"\r")
        self.size += len(body)
        self._tail = (self._tail + body[-4:])[-4:]
        invalid_at, reason = _check(body, pending_cr)
        return DataScan(end, invalid_at, reason)

    def _find_end(self, chunk: bytes) -> int:
        tail = self._tail
        window = tail + chunk[:4]
        pos = window.find(END_OF_DATA)
        if pos >= 0:
            return pos + len(END_OF_DATA) - len(tail)
        pos = chunk.find(END_OF_DATA)
        return -1 if pos < 0 else pos + len(END_OF_DATA)


def _check(body: bytes, pending_cr: bool) -> tuple[int, str]:
    """Find the first bare CR, bare LF or NUL in ``body``; (-1, "") if clean.

    ``pending_cr``: the previous chunk ended with CR, so a leading LF completes it and
    anything else makes that CR bare. A CR that ends ``body`` may still be completed
    by the next chunk and is not reported here.
    """
    if not body:
        return -1, ""
    n_pairs = body.count(b"\r\n")
    lead_lf = body[0] == 0x0A
    if pending_cr and not lead_lf:
        return 0, "bare CR"
    trail_cr = body[-1] == 0x0D
    lf_ok = body.count(b"\n") == n_pairs + (1 if pending_cr else 0)
    cr_ok = body.count(b"\r") == n_pairs + (1 if trail_cr else 0)
    if lf_ok and cr_ok and b"\x00" not in body:
        return -1, ""
    start = 1 if pending_cr else 0
    for m in _BARE.finditer(body, start):
        pos = m.start()
        byte = body[pos]
        if byte == 0x0D and pos == len(body) - 1:
            continue  # may pair with the next chunk's LF
        return pos, {0x0D: "bare CR", 0x0A: "bare LF"}.get(byte, "NUL")
    return -1, ""  # pragma: no cover - the counts said otherwise


_BREAK = re.compile(rb"\r\n|[\r\n](\.)?")


def normalize(part: bytes, bare_before: bool) -> tuple[bytes, bool]:
    """Rewrite bare CR and bare LF to CRLF and dot-stuff a line that follows a bare
    break (so a smuggled ``LF . LF`` can never become an end of data upstream).
    ``bare_before``: the previous chunk ended with a bare break. Returns the bytes
    and whether this part ends with a bare break."""

    def sub(m: re.Match[bytes]) -> bytes:
        if m.group() == b"\r\n":
            return b"\r\n"
        return b"\r\n.." if m.group(1) else b"\r\n"

    out = _BREAK.sub(sub, part)
    if bare_before and part.startswith(b"."):
        out = b"." + out
    ends_bare = (part.endswith(b"\n") and not part.endswith(b"\r\n")) or part.endswith(b"\r")
    return out, ends_bare
