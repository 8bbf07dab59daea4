"""Opening inputs: plain files, ``.gz`` (by magic bytes, not by name) and ``-``.

Inputs are read as bytes and framed into lines by the buffered reader; nothing is
decoded here. ``Source.position`` reports how far the underlying (compressed) file
has been read, for the progress bar.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
# Lines longer than this are cut (a log line that long is not SMTP); keeps a
# newline-free binary file from being read into memory whole.
MAX_LINE = 64 * 1024
SNIFF_LINES = 200


class InputError(Exception):
    """An input that cannot be opened or read; the CLI exits 2."""


class Source:
    def __init__(self, name: str) -> None:
        self.name = name
        self.display = "<stdin>" if name == "-" else name
        self._raw: BinaryIO
        try:
            if name == "-":
                self._raw = sys.stdin.buffer
                self.total = 0
            else:
                self._raw = open(name, "rb")  # noqa: SIM115 - closed in close()
                self.total = os.fstat(self._raw.fileno()).st_size
        except OSError as exc:
            raise InputError(f"{name}: {exc.strerror or exc}") from None
        buffered = self._raw if isinstance(self._raw, io.BufferedReader) else None
        head = buffered.peek(2)[:2] if buffered is not None else b""
        self._stream: BinaryIO = self._raw
        if head == GZIP_MAGIC:
            gz = gzip.GzipFile(fileobj=self._raw, mode="rb")
            self._stream = io.BufferedReader(gz, 1 << 20)
        self.lines_read = 0
        self.bytes_read = 0

    @property
    def position(self) -> int:
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return self.bytes_read

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """``(line_number, raw_line)``; raises InputError on a read failure."""
        readline = self._stream.readline
        no = 0
        try:
            while True:
                raw = readline(MAX_LINE)
                if not raw:
                    break
                no += 1
                self.bytes_read += len(raw)
                yield no, raw
                if not raw.endswith(b"\n") and len(raw) >= MAX_LINE:
                    while True:  # skip the rest of an over-long line
                        rest = readline(MAX_LINE)
                        self.bytes_read += len(rest)
                        if not rest or rest.endswith(b"\n"):
                            break
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise InputError(f"{self.display}: read error at line {no + 1}: {exc}") from None
        finally:
            self.lines_read = no

    def close(self) -> None:
        if self._raw is not sys.stdin.buffer:
            self._raw.close()
