"""Opening inputs: plain files, ``.gz`` (by magic bytes, not by name) and ``-``.

Inputs are read as bytes in blocks and framed into lines on ``\n`` only; nothing is
decoded here. Framing is done per block by C code (``BytesIO.readlines``) and
lines are numbered by ``zip(count(), …)``, so no Python code runs per line until
the parser. ``Source.position`` reports how far the underlying (compressed) file
has been read, for the progress bar.
"""

from __future__ import annotations

import gzip
import io
import itertools
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
# Bytes read at a time; lines are framed a block at a time.
BLOCK = 1 << 20


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
        """``(line_number, raw_line)``; raises InputError on a read failure.

        A line keeps its ``\n``; one longer than ``MAX_LINE`` is cut to its first
        ``MAX_LINE`` bytes and the rest is skipped.
        """
        return zip(itertools.count(1), itertools.chain.from_iterable(self._blocks()))

    def _blocks(self) -> Iterator[list[bytes]]:
        read = self._stream.read
        rest = b""  # an incomplete line carried into the next block
        skipping = False  # inside the tail of an over-long line
        try:
            while True:
                block = read(BLOCK)
                if not block:
                    break
                self.bytes_read += len(block)
                if skipping:
                    nl = block.find(b"\n")
                    if nl < 0:
                        continue
                    block, skipping = block[nl + 1 :], False
                if rest:
                    block = rest + block
                end = block.rfind(b"\n") + 1
                rest = block[end:]
                if end:
                    lines = io.BytesIO(block[:end] if rest else block).readlines()
                    if max(map(len, lines)) > MAX_LINE:
                        lines = [ln if len(ln) <= MAX_LINE else ln[:MAX_LINE] for ln in lines]
                    self.lines_read += len(lines)
                    yield lines
                if len(rest) >= MAX_LINE:  # no newline in sight: cut, skip to the next
                    self.lines_read += 1
                    yield [rest[:MAX_LINE]]
                    rest, skipping = b"", True
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise InputError(
                f"{self.display}: read error at line {self.lines_read + 1}: {exc}"
            ) from None
        if rest:
            self.lines_read += 1
            yield [rest]

    def close(self) -> None:
        if self._raw is not sys.stdin.buffer:
            self._raw.close()
