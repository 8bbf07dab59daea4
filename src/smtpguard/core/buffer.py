"""The client's receive buffer: CRLF line framing with a resumable search.

Bytes are appended as they arrive and consumed from the front with ``del``; the
search for the next CRLF resumes where the last one stopped, so a line that arrives
one byte at a time costs O(n), not O(n²). Lines end at CRLF and nowhere else
(RFC 5321 §2.3.8): a bare CR or LF is part of the line, for the session to refuse.
A line longer than the limit is reported as soon as the limit is passed, without
waiting for its end; the rest of it can then be skipped without being kept.
"""

from __future__ import annotations

from typing import Final

CRLF: Final = b"\r\n"


class ReceiveBuffer:
    __slots__ = ("_search", "data")

    def __init__(self) -> None:
        self.data = bytearray()  # read-only outside: truthiness and length on the hot path
        self._search = 0  # where the CRLF search resumes

    def __len__(self) -> int:
        return len(self.data)

    def append(self, data: bytes) -> None:
        self.data += data

    def prepend(self, data: bytes) -> None:
        """Bytes that followed an end of data in the same chunk: commands again."""
        self.data[:0] = data
        self._search = 0

    def has_line(self) -> bool:
        return self.data.find(CRLF) >= 0

    def next_line(self, limit: int) -> bytes | None:
        """The next line with its CRLF; None until one is complete. Raises
        :class:`LineTooLong` for a line over ``limit`` octets (CRLF included),
        complete or not; the caller decides whether to :meth:`skip` the rest."""
        buf = self.data
        nl = buf.find(CRLF, self._search)
        if nl < 0:
            self._search = max(len(buf) - 1, 0)  # a CR at the end may pair with an LF
            if len(buf) > limit:
                raise LineTooLong
            return None
        if nl + 2 > limit:
            raise LineTooLong
        line = bytes(buf[: nl + 2])
        del buf[: nl + 2]
        self._search = 0
        return line

    def skip(self) -> bool:
        """Drop the rest of an over-long line; True once its CRLF was reached."""
        buf = self.data
        nl = buf.find(CRLF)
        self._search = 0
        if nl < 0:
            keep = 1 if buf.endswith(b"\r") else 0  # may be half of the CRLF
            del buf[: len(buf) - keep]
            return False
        del buf[: nl + 2]
        return True

    def take(self, n: int = -1) -> bytes:
        """Remove and return the first ``n`` octets (all with -1)."""
        buf = self.data
        if n < 0 or n >= len(buf):
            out = bytes(buf)
            buf.clear()
        else:
            out = bytes(buf[:n])
            del buf[:n]
        self._search = 0
        return out

    def clear(self) -> None:
        self.data.clear()
        self._search = 0


class LineTooLong(Exception):
    """A command line over the limit (RFC 5321 §4.5.3.1.4)."""
