"""MIME structure read as a mail client reads it (RFC 2045/2046), streaming.

Theory of operation
-------------------
Our model of a mail client is Python's ``email`` package with ``policy.default``.
:class:`MimeReader` follows its feedparser line by line, without holding the message:

* A stack of frames, one per message or body part being read (the feedparser's
  nested generators). A frame reads its header block, then a body whose kind its
  content type decides: a multipart's preamble, body parts and epilogue; a
  ``message/*`` part's enclosed message (a new frame); ``message/delivery-status``
  blocks of fields separated by blank lines (a frame each); or a leaf body, skipped.
* False end of input (RFC 2046 §5.1.2): a line that is a delimiter of any enclosing
  multipart whose body part is being read (``--boundary``, optional ``--``, optional
  space or tab: transport padding, §5.1.1), or a blank line inside a delivery-status
  block, ends the innermost frame, and its parent reads the same line again. Lines a
  part header takes, how a multipart skips repeated delimiters, a ``From `` line
  pushed back from the end of a header block: each as the feedparser does it.
* Header blocks: only the Content-Type, Content-Disposition and
  Content-Transfer-Encoding fields are kept (bounded), and are decoded by the
  ``email`` package itself (:func:`read_fields`): the content type with its
  defaults, RFC 2231 continuations and charsets, RFC 2047 encoded words, the file
  name as ``get_filename()`` gives it. The checks and the client share the decoder.

Lines come in unstuffed (RFC 5321 §4.5.2), with their line ending. Bodies need only
lines that could end them: :attr:`MimeReader.mode` tells the caller whether every line
is needed, only lines starting with ``--``, or none.

Bounds (:class:`~smtpguard.core.policy.MimeStructureCheck`): nesting depth, octets of
one part's kept fields, octets of kept fields per message, parts per message. Past a
bound, or when ``email`` cannot decode a header block, the reader stops and says why
(:attr:`MimeReader.failure`); it never guesses.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from email import policy as email_policy
from email.headerregistry import BaseHeader, ContentTransferEncodingHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import collapse_rfc2231_value
from typing import Final

from smtpguard.core.policy import MimeStructureCheck

_NAME_RUN: Final = re.compile(rb"[\x21-\x39\x3b-\x7e]*")
_KEPT_FIELDS: Final = frozenset(
    {b"content-type", b"content-disposition", b"content-transfer-encoding"}
)
_FROM_LINE: Final = b"From \r\n"  # what a pushed-back From line reads as (its text never matters)
DEPTH_OFF: Final = 20  # the nesting bound while the mime_structure check is off
# ";", '"', "(", ")", space and tab in one kept field. The email decoder's work grows
# with their square (8000 ";" in 8 KiB take it 0.4 s, 4000 words 64 ms); real fields
# have tens, a 255-character name in 30 quoted RFC 2231 sections about 120.
FIELD_DELIMITERS: Final = 256

ALL: Final = 2  # every line is needed
DASHES: Final = 1  # only lines starting with "--"
NONE: Final = 0  # no line is needed


def header_line(text: bytes) -> bool:
    """The feedparser's header line (email.feedparser.headerRE on the line as
    BytesParser decodes it): a continuation, an mbox "From " line, or a field name
    of printable ASCII but ":" (possibly empty) and a colon. A loop over byte
    values, native once compiled: a regular expression was a generic call a line."""
    n = len(text)
    if n == 0:
        return False
    c = text[0]
    if c == 0x20 or c == 0x09:
        return True
    if c == 0x46 and text.startswith(b"From "):
        return True
    i = 0
    while i < n:
        c = text[i]
        if c == 0x3A:
            return True
        if c < 0x21 or c > 0x7E:
            return False
        i += 1
    return False


class Stage(enum.Enum):
    HEADERS = "headers"  # reading the header block
    LEAF = "leaf"  # a body read to its end, unread
    PREAMBLE = "preamble"  # multipart, before its first delimiter
    PARTS = "parts"  # multipart, a body part (the frame above) is being read
    BETWEEN = "between"  # multipart, a body part just ended at this frame's delimiter
    SKIP = "skip"  # multipart, after a delimiter: repeated delimiters are skipped
    EPILOGUE = "epilogue"  # multipart, after its close delimiter
    ENCLOSED = "enclosed"  # message/*: the enclosed message (the frame above)
    DSN_FIRST = "dsn-first"  # delivery-status: the first block, made even when empty
    DSN_NEXT = "dsn-next"  # delivery-status: the next line starts a block
    DSN_BLOCK = "dsn-block"  # delivery-status: a block (the frame above) is being read
    DSN_AFTER = "dsn-after"  # delivery-status: the blank line after a block is dropped


@dataclass(frozen=True, slots=True)
class Part:
    """One node of ``Message.walk()``, as the client reads it."""

    content_type: str  # get_content_type()
    filename: str | None  # get_filename()
    names: tuple[str, ...]  # Content-Disposition filename and Content-Type name, decoded
    transfer_encodings: tuple[str, ...]  # Content-Transfer-Encoding as read, if present
    boundary: str | None  # get_boundary(), for a multipart
    error: str = ""  # why email could not decode the block ("" if it could)


_REGISTRY: Final = HeaderRegistry()


@functools.lru_cache(maxsize=64)
def _header(name: str, value: str) -> BaseHeader:
    # Parse each kept field once per block (get_content_type, get_filename and the
    # rest each fetch it again); a pure function of its arguments.
    return _REGISTRY(name, value)


_POLICY: Final = email_policy.default.clone(header_factory=_header)


# Built once: a frozen dataclass's __init__ is interpreted, and these are the parts
# of nearly every message.
_PLAIN: Final = Part("text/plain", None, (), (), None)
_DIGEST_DEFAULT: Final = Part("message/rfc822", None, (), (), None)


def read_fields(fields: tuple[bytes, ...], digest: bool) -> Part:
    """Decode the kept fields of one header block (each with its continuation lines
    and line ends) as ``email`` reads them; ``digest``: the parent is a
    multipart/digest, whose parts default to message/rfc822 (RFC 2046 §5.1.5)."""
    if not fields:  # most header blocks: no Content-* field at all
        return _DIGEST_DEFAULT if digest else _PLAIN
    return _read_fields(fields, digest)


@functools.lru_cache(maxsize=256)
def _read_fields(fields: tuple[bytes, ...], digest: bool) -> Part:
    try:
        msg = EmailMessage(policy=_POLICY)
        if digest:
            msg.set_default_type("message/rfc822")
        for raw in fields:
            name, value = _POLICY.header_source_parse([raw.decode("ascii", "surrogateescape")])
            msg.set_raw(name, value)
        ctype = msg.get_content_type()
        names: list[str] = []
        for param, header in (("filename", "content-disposition"), ("name", "content-type")):
            got = msg.get_param(param, None, header)
            if isinstance(got, (str, tuple)):
                names.append(collapse_rfc2231_value(got).strip())
        encodings: list[str] = []
        cte = msg.get("content-transfer-encoding")
        if cte is not None:
            encodings.append(str(cte).strip().lower())
            if isinstance(cte, ContentTransferEncodingHeader) and cte.cte not in encodings:
                encodings.append(cte.cte)
        boundary = msg.get_boundary() if ctype.startswith("multipart/") else None
        return Part(ctype, msg.get_filename(), tuple(names), tuple(encodings), boundary)
    except Exception as exc:  # any failure to decode is refused, never passed
        return Part("", None, (), (), None, type(exc).__name__)


class _Frame:
    __slots__ = (
        "content_type", "cur", "delimiter", "digest", "fields", "last_from", "lines",
        "size", "stage",
    )  # fmt: skip

    def __init__(self, digest: bool) -> None:
        self.stage = Stage.HEADERS
        self.digest = digest  # the parent is a multipart/digest
        self.content_type = ""
        self.delimiter: re.Pattern[bytes] | None = None
        self.fields: list[bytes] = []
        self.cur: bytearray | None = None  # a kept field being read
        self.size = 0  # octets of kept fields
        self.lines = 0  # header lines so far
        self.last_from = False  # the last header line read was a "From " line, not the first


class MimeReader:
    """Feed unstuffed lines (:meth:`line`), then :meth:`close`; collect :class:`Part`
    objects from :attr:`parts` as they are read, and :attr:`failure` when the
    structure is beyond a bound or cannot be decoded."""

    __slots__ = (
        "_active", "_depth", "_frames", "_limits", "_nparts", "_total", "failure", "mode", "parts"
    )  # fmt: skip

    def __init__(self, limits: MimeStructureCheck) -> None:
        self._limits = limits
        self._depth = limits.limit if limits.limit is not None else DEPTH_OFF
        self._frames: list[_Frame] = []
        self._active: list[_Frame] = []  # frames whose end-of-input rule is in force
        self._nparts = 0
        self._total = 0
        self.parts: list[Part] = []  # read since the caller last took them
        self.failure = ""
        self.mode = ALL
        self._push(False)

    # -- input -----------------------------------------------------------------
    def line(self, text: bytes, whole: bool = True, blank_tail: bool = False) -> bool:
        """One line, with its line ending. ``whole`` False: ``text`` is only the
        line's start, and ``blank_tail`` says whether the rest was only spaces, tabs
        and the line ending. True when the line was taken by a body part's header."""
        frames = self._frames
        if not frames:
            return False
        f = frames[-1]
        if f.stage is Stage.HEADERS and not self._active and header_line(text):
            # The common case, a header line with no delimiter in force: nothing else
            # to decide, and the mode stays ALL.
            self._header_field(f, text, whole)
            return len(frames) > 1
        cand = text if whole else (text + b"\n" if blank_tail else b"")
        header = self._line(text, whole, cand)
        self._set_mode()
        return header

    def close(self) -> None:
        """End of the message: every frame still open ends."""
        while self._frames:
            top = self._frames[-1]
            if not self._at_eof(top):
                break
        self._frames.clear()
        self._set_mode()

    # -- the feedparser, a line at a time ----------------------------------------
    def _line(self, text: bytes, whole: bool, cand: bytes) -> bool:
        frames = self._frames
        while frames and self._ends(cand):
            if not self._at_eof(frames[-1]):
                return False
        if not frames:
            return False
        f = frames[-1]
        stage = f.stage
        if stage is Stage.HEADERS:
            return self._header_line(f, text, whole, cand)
        if stage is Stage.PREAMBLE or stage is Stage.BETWEEN:
            m = f.delimiter.match(cand) if f.delimiter is not None else None
            if m is None:
                pass
            elif not m.group(1):
                f.stage = Stage.SKIP
            else:  # a close delimiter before any part: the rest is all preamble
                f.stage = Stage.EPILOGUE if stage is Stage.BETWEEN else Stage.LEAF
        elif stage is Stage.SKIP:
            if f.delimiter is not None and f.delimiter.match(cand) is not None:
                return False  # a repeated delimiter makes no empty part
            self._open_part(f)
            return self._line(text, whole, cand)
        elif stage is Stage.DSN_FIRST or stage is Stage.DSN_NEXT:
            self._open_block(f)
            return self._line(text, whole, cand)
        elif stage is Stage.DSN_AFTER:
            f.stage = Stage.DSN_NEXT
        return False

    def _ends(self, cand: bytes) -> bool:
        """Whether ``cand`` is a false end of input for the innermost frame."""
        for f in self._active:
            if f.stage is Stage.DSN_BLOCK:
                if cand[:1] in (b"\r", b"\n"):
                    return True
            elif f.delimiter is not None and cand[:2] == b"--" and f.delimiter.match(cand):
                return True
        return False

    def _at_eof(self, f: _Frame) -> bool:
        """The innermost frame reads end of input. False when the reader stopped."""
        stage = f.stage
        if stage is Stage.HEADERS:
            pushed = self._end_headers(f)
            if pushed and self._frames:
                self._line(_FROM_LINE, True, _FROM_LINE)
        elif stage is Stage.SKIP:
            self._open_part(f)  # a delimiter then end of input: one empty part
        elif stage is Stage.DSN_FIRST:
            self._open_block(f)  # the first block is made even when empty
        else:
            self._frames.pop()
            if self._frames:
                parent = self._frames[-1]
                if parent.stage is Stage.PARTS:
                    self._active.pop()
                    parent.stage = Stage.BETWEEN
                elif parent.stage is Stage.DSN_BLOCK:
                    self._active.pop()
                    parent.stage = Stage.DSN_AFTER
        return bool(self._frames)

    def _open_part(self, f: _Frame) -> None:
        f.stage = Stage.PARTS
        self._active.append(f)
        self._push(f.content_type == "multipart/digest")

    def _open_block(self, f: _Frame) -> None:
        f.stage = Stage.DSN_BLOCK
        self._active.append(f)
        self._push(False)

    def _push(self, digest: bool) -> None:
        self._nparts += 1
        limits = self._limits
        if len(self._frames) > self._depth:
            self._fail(f"MIME structure nested deeper than {self._depth} levels")
        elif self._nparts > limits.parts:
            self._fail(f"more than {limits.parts} MIME parts")
        else:
            self._frames.append(_Frame(digest))

    # -- header blocks -----------------------------------------------------------
    def _header_line(self, f: _Frame, text: bytes, whole: bool, cand: bytes) -> bool:
        if not header_line(text):
            if not whole and _NAME_RUN.fullmatch(text) is not None:
                self._fail("MIME header line too long to read")
                return False
            blank = text[:1] in (b"\r", b"\n")
            pushed = self._end_headers(f)
            if pushed and self._frames:
                self._line(_FROM_LINE, True, _FROM_LINE)
            if not blank and self._frames:
                self._line(text, whole, cand)
            return False
        self._header_field(f, text, whole)
        return len(self._frames) > 1

    def _header_field(self, f: _Frame, text: bytes, whole: bool) -> None:
        """A line the feedparser takes as a header line (:func:`header_line`)."""
        f.lines += 1
        f.last_from = False
        first = text[0]
        if first == 0x20 or first == 0x09:
            if f.cur is not None:
                self._keep(f, f.cur, text, whole)
            return
        if f.cur is not None:
            self._end_field(f)
            if self.failure:
                return
        if first == 0x46 and text.startswith(b"From "):
            f.last_from = f.lines > 1
        elif first == 0x43 or first == 0x63:  # only Content-* fields are kept
            colon = text.find(b":")
            if colon > 0 and text[:colon].lower() in _KEPT_FIELDS:
                f.cur = bytearray()
                self._keep(f, f.cur, text, whole)

    def _keep(self, f: _Frame, cur: bytearray, text: bytes, whole: bool) -> None:
        f.size += len(text)
        self._total += len(text)
        limits = self._limits
        if not whole or f.size > limits.header_block:
            self._fail(f"MIME header fields of a part over {limits.header_block} octets")
        elif self._total > limits.header_total:
            self._fail(f"MIME header fields of the message over {limits.header_total} octets")
        else:
            cur += text

    def _end_field(self, f: _Frame) -> None:
        cur = f.cur
        if cur is None:
            return
        f.cur = None
        marks = cur.count(b";") + cur.count(b'"') + cur.count(b"(") + cur.count(b")")
        marks += cur.count(b" ") + cur.count(b"\t")
        if marks > FIELD_DELIMITERS:
            self._fail(f"a MIME header field with over {FIELD_DELIMITERS} delimiters")
        else:
            f.fields.append(bytes(cur))

    def _end_headers(self, f: _Frame) -> bool:
        """Decode the block and turn to the body; True when the block's last line was
        a "From " line, which the feedparser pushes back to be read again."""
        self._end_field(f)
        if self.failure:
            return False
        part = read_fields(tuple(f.fields), f.digest)
        f.fields = []
        if part.error:
            self._fail(f"MIME header block not readable ({part.error})")
            return False
        self.parts.append(part)
        ctype = f.content_type = part.content_type
        if ctype == "message/delivery-status":
            f.stage = Stage.DSN_FIRST
        elif ctype.startswith("message/"):
            f.stage = Stage.ENCLOSED
            self._push(False)
        elif part.boundary is not None:
            f.stage = Stage.PREAMBLE
            f.delimiter = _delimiter(part.boundary)
        else:
            f.stage = Stage.LEAF
        return f.last_from and bool(self._frames)

    # -- state -------------------------------------------------------------------
    def _fail(self, why: str) -> None:
        if not self.failure:
            self.failure = why
        self._frames.clear()
        self._active.clear()

    def _set_mode(self) -> None:
        if not self._frames:
            self.mode = NONE
            return
        stage = self._frames[-1].stage
        if stage is Stage.LEAF or stage is Stage.EPILOGUE or stage is Stage.PREAMBLE:
            dashes = stage is Stage.PREAMBLE
            for f in self._active:
                if f.stage is Stage.DSN_BLOCK:
                    self.mode = ALL
                    return
                dashes = True
            self.mode = DASHES if dashes else NONE
        else:
            self.mode = ALL


def _delimiter(boundary: str) -> re.Pattern[bytes] | None:
    """The feedparser's delimiter line for ``boundary`` (group 1: the close ``--``);
    None when no line can match (a boundary with characters beyond the bytes a
    line can hold as decoded)."""
    try:
        sep = ("--" + boundary).encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return re.compile(re.escape(sep) + rb"(--)?[ \t]*(?:\r\n|\r|\n)?$")
