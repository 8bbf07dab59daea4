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
from typing import Final

from smtpguard.core.grammar import END_OF_DATA

_BARE: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")


class DataScan:
    """Result of scanning one chunk.

    ``end``: offset just past the terminator in this chunk, or -1 if not yet seen.
    ``invalid_at``: offset of the first forbidden byte in this chunk (-1: none), and
    ``reason`` its name. A bare CR that ended the previous chunk is reported at 0.

    A value like :class:`~smtpguard.core.grammar.Reply`, and a native class for the
    same reason: one is built per chunk.
    """

    __slots__ = ("end", "invalid_at", "reason")

    def __init__(self, end: int, invalid_at: int = -1, reason: str = "") -> None:
        self.end: Final = end
        self.invalid_at: Final = invalid_at
        self.reason: Final = reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataScan):
            return NotImplemented
        return (self.end, self.invalid_at, self.reason) == (
            other.end,
            other.invalid_at,
            other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.end, self.invalid_at, self.reason))

    def __repr__(self) -> str:
        return f"DataScan(end={self.end!r}, invalid_at={self.invalid_at!r}, reason={self.reason!r})"


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
    if lf_ok and cr_ok and 0x00 not in body:  # a byte's value: see check_line_bytes
        return -1, ""
    start = 1 if pending_cr else 0
    for m in _BARE.finditer(body, start):
        pos = m.start()
        byte = body[pos]
        if byte == 0x0D and pos == len(body) - 1:
            continue  # may pair with the next chunk's LF
        return pos, {0x0D: "bare CR", 0x0A: "bare LF"}.get(byte, "NUL")
    return -1, ""  # pragma: no cover - the counts said otherwise


_BREAK: Final = re.compile(rb"\r\n|\r|\n")


class Normalizer:
    """Smuggling ``normalize`` mode: rewrite bare CR and bare LF line ends to CRLF,
    as a stream, so that the output never holds an end of data the raw stream did not.

    The end of data is fixed on the raw stream first (:class:`DataScanner`); this only
    rewrites the bytes before it. The upstream will read the output as CRLF lines and
    end the message at the first line that is a lone ``.``, so a line that starts with
    a dot is stuffed with a second dot

    * when the break before it was bare (a legacy sender's ``LF . LF``), and
    * when it is a lone dot ended by a bare break (``CRLF . LF``, ``CRLF . CR``,
      ``CRLF . CR CR LF``, or ``. LF`` as the first line of the data).

    A lone dot between two real CRLFs is the end of data itself, which the scanner
    stops at, so it never reaches this class before the end. To decide the second case
    the dot that starts a line (and a CR after it) is held back until the next byte
    shows how the line goes on; a CR that ends a chunk is held the same way. At most
    two octets are ever held.

    ``feed(part, final)``: ``part`` is message data up to the client's end of data;
    ``final`` says it includes the terminator, which flushes everything held.
    """

    __slots__ = ("_bare", "_bol", "_held", "changed")

    def __init__(self) -> None:
        self._held = b""
        self._bol = True  # the next byte starts a line (the 354 reply counts as one)
        self._bare = False  # the break before the current line was bare
        self.changed = False  # some line end or dot was rewritten

    def feed(self, part: bytes, final: bool = False) -> bytes:
        buf = self._held + part if self._held else part
        cut = len(buf) if final else len(buf) - self._undecided(buf)
        self._held = buf[cut:]
        seg = buf[:cut] if cut < len(buf) else buf
        out = self._rewrite(seg)
        if out is not seg:
            self.changed = True
        return out

    def _undecided(self, buf: bytes) -> int:
        """How many octets at the end of ``buf`` cannot be rewritten yet."""
        n = len(buf)
        hold = 1 if buf.endswith(b"\r") else 0
        dot = n - hold - 1  # where a line-start dot would be
        if dot >= 0 and buf[dot] == 0x2E and self._starts_line(buf, dot):
            hold += 1
        return hold

    def _starts_line(self, buf: bytes, pos: int) -> bool:
        return (pos == 0 and self._bol) or (pos > 0 and buf[pos - 1] in (0x0A, 0x0D))

    def _rewrite(self, seg: bytes) -> bytes:
        if not seg:
            return seg
        pairs = seg.count(b"\r\n")
        clean = seg.count(b"\r") == pairs and seg.count(b"\n") == pairs
        if clean and not (self._bol and self._bare and seg[0] == 0x2E):
            # Only CRLF breaks: nothing to rewrite (a lone dot between CRLFs would be
            # the end of data, which the scanner stops at).
            if pairs:
                self._bare = False
            self._bol = seg.endswith(b"\n")
            return seg
        out = bytearray()
        pos = 0
        bol, bare = self._bol, self._bare
        for m in _BREAK.finditer(seg):
            line = seg[pos : m.start()]
            brk = m.group()
            if bol and line[:1] == b"." and (bare or (line == b"." and brk != b"\r\n")):
                out += b"."
            out += line
            out += b"\r\n"
            bol, bare = True, brk != b"\r\n"
            pos = m.end()
        tail = seg[pos:]
        if tail:
            if bol and bare and tail[:1] == b".":
                out += b"."
            out += tail
            bol = False
        self._bol, self._bare = bol, bare
        return bytes(out)
