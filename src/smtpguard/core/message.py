"""Streaming checks on message content: header section, body lines, MIME parts.

Theory of operation
-------------------
The inspector sees the DATA bytes of one message (as relayed, dot-stuffing included),
chunk by chunk, and never holds more than one line prefix. In ``normalize`` mode it
reads them as the server will, through its own :class:`~smtpguard.core.data.Normalizer`.
The message's header section is read as MTAs read it (a field name, optional white
space, a colon; RFC 5322 §2.2, §3.6.8) for the header size, header line and To/Cc
checks. MIME structure is read as a mail client reads it, by
:class:`~smtpguard.core.mime.MimeReader` (Python's ``email`` package is the model):
it is fed unstuffed lines (RFC 5321 §4.5.2) and reports every part's content type,
file names and transfer encoding, which the MIME checks test. Bodies are scanned at
C speed: long lines by stepping ``rfind`` over windows of the line limit, delimiter
candidates (lines starting with ``--``, or ``.--`` before unstuffing) by one regex;
only the lines the MIME reader asks for drop back to line mode. Each check fires at
most once per message.
"""

from __future__ import annotations

import re
from typing import Final

from smtpguard.core.checks import Finding, finding, octets, over, pattern_fires
from smtpguard.core.data import Normalizer
from smtpguard.core.mime import ALL, DASHES, MimeReader, Part
from smtpguard.core.policy import Check, Checks, PatternCheck

KEEP: Final = 2048  # octets of a line kept for parsing; the rest is only counted
_NOT_BLANK: Final = re.compile(rb"[^ \t\r\n]")
# A line that may be a delimiter: "--", or ".--" before unstuffing. A regex: faster
# here than bytes.find, which would need two passes.
_CANDIDATE: Final = re.compile(rb"\n\.?--")
_ADDR_FIELDS: Final = frozenset({"to", "cc"})
# The Message-ID field's text kept for the protocol log (RFC 5322 line limit).
ID_LIMIT: Final = 998


def _mime_checks(c: Checks) -> list[tuple[str, str, Check | PatternCheck]]:
    """The checks that need the MIME reader, with their event IDs."""
    return [
        ("mime_filename_length", "SG-CHK-MIME-FILENAME-LENGTH", c.mime_filename_length),
        ("mime_filename_pattern", "SG-CHK-MIME-FILENAME", c.mime_filename_pattern),
        ("mime_type_pattern", "SG-CHK-MIME-TYPE", c.mime_type_pattern),
        ("transfer_encoding_pattern", "SG-CHK-TRANSFER-ENCODING", c.transfer_encoding_pattern),
    ]


def starts_field(line: bytes) -> bool:
    """Whether ``line`` starts with a header field's name and colon (RFC 5322 §3.6.8:
    ``1*ftext``, printable ASCII but ":", then optional white space, as real mail has
    it, then ":"). A loop over byte values, native once compiled: a regular expression
    here was a generic call for every header line."""
    n = len(line)
    i = 0
    while i < n and 0x21 <= line[i] <= 0x7E and line[i] != 0x3A:
        i += 1
    if i == 0:
        return False
    while i < n and (line[i] == 0x20 or line[i] == 0x09):
        i += 1
    return i < n and line[i] == 0x3A


def _text(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")


def is_message_id_field(line: bytes) -> bool:
    """Whether a header line starts the Message-ID field (its name in any case,
    optional white space, a colon: the reading of :func:`starts_field`)."""
    if len(line) < 11 or line[:10].lower() != b"message-id":
        return False
    i = 10
    while i < len(line) and (line[i] == 0x20 or line[i] == 0x09):
        i += 1
    return i < len(line) and line[i] == 0x3A


def msg_id(value: str) -> str:
    """The identifier of a Message-ID field's value, without its angle brackets, as
    Postfix's cleanup logs it and a mail client keys a message: what lies between the
    first ``<`` and the next ``>``; a value without them, its first word."""
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start + 1)
        if end > start:
            return value[start + 1 : end].strip()
    words = value.split()
    return words[0] if words else ""


class AddressCount:
    """Addresses in one To or Cc field, counted as the field streams, line by line,
    with no cap: the larger of its "@"s and its list entries (commas plus one),
    each outside quoted strings and comments (RFC 5322 §3.4, §3.2.2). A mail client
    reads at most that many (a group's members are separated by commas too; an
    address without a domain has no "@" but is an entry). An upper bound on purpose:
    a limit is never walked round by writing the list in a form one count misses.
    (Python's ``email`` also splits at a comma decoded from an RFC 2047 encoded word;
    RFC 2047 §6.2 decodes only after the field is parsed, so this count does not.)"""

    __slots__ = ("ats", "commas", "comment", "escape", "quoted", "text")

    def __init__(self) -> None:
        self.ats = 0
        self.commas = 0
        self.comment = 0  # depth of nested comments
        self.escape = False  # the last character was a backslash
        self.quoted = False
        self.text = False  # anything but white space seen

    def feed(self, text: str) -> None:
        for c in text:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif self.quoted:
                if c == '"':
                    self.quoted = False
            elif self.comment:
                if c == "(":
                    self.comment += 1
                elif c == ")":
                    self.comment -= 1
            elif c == '"':
                self.quoted = True
            elif c == "(":
                self.comment = 1
            elif c == "@":
                self.ats += 1
            elif c == ",":
                self.commas += 1
            if not self.text and c not in " \t":
                self.text = True

    @property
    def count(self) -> int:
        return max(self.ats, self.commas + 1 if self.text else 0)


class MessageInspector:
    """Feed message chunks (terminator excluded or included, it does not matter);
    collect :class:`Finding` objects from :meth:`feed`. ``record``: keep every MIME
    part read in :attr:`parts` (tests compare them with a mail client's reading).
    ``want_id``: read the first Message-ID field into :attr:`message_id` (for the
    protocol log, which names each message as the server's and the recipient's logs
    do)."""

    def __init__(
        self, checks: Checks, normalize: bool = False, record: bool = False, want_id: bool = False
    ) -> None:
        self.c = checks
        self._header = True  # in the message's header section (as MTAs read it)
        self._carry = b""  # prefix of the current incomplete line
        self._carry_len = 0  # its true length
        self._blank_tail = True  # what was cut off the carried line was white space
        self._crlf = True  # the last line read ended with CRLF (the next may be stuffed)
        self._addresses: AddressCount | None = None  # a To/Cc field being counted
        self._uncounted = False  # a To/Cc line was longer than the part kept of it
        self._header_size = 0
        self._to_cc = 0
        self._received = 0  # Received: fields in the header section
        self._fired: set[str] = set()
        self._out: list[Finding] = []
        self._normalizer = Normalizer() if normalize else None
        on = any(check.enabled for _name, _event, check in _mime_checks(checks))
        self._mime: MimeReader | None = MimeReader(checks.mime_structure) if on else None
        self._keep = max(KEEP, checks.mime_structure.header_block + 2)
        self.parts: list[Part] | None = [] if record else None
        self.refused = ""  # why the MIME structure was refused, if it was
        self.size = 0
        self._want_id = want_id
        self._id_text: str | None = None  # the Message-ID field being read
        self.message_id = ""

    # -- input -----------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[Finding]:
        self.size += len(chunk)
        if self._normalizer is not None:
            chunk = self._normalizer.feed(chunk)
        pos, end = 0, len(chunk)
        while pos < end:
            if not self._header and not self._carry_len:
                pos = self._scan_body(chunk, pos)
                if pos >= end:
                    break
            nl = chunk.find(b"\n", pos)
            if nl < 0:
                self._partial(chunk, pos, end)
                break
            line, length = self._complete(chunk, pos, nl + 1)
            self._line(line, length)
            pos = nl + 1
        size = self.c.message_size
        if over(size, self.size):
            self._fire(
                finding(
                    "message_size",
                    "SG-CHK-MESSAGE-SIZE",
                    f"message over {size.limit} octets",
                    size,
                    552,
                    "5.3.4 Message size exceeds fixed maximum message size",
                )
            )
        out, self._out = self._out, []
        return out

    def close(self) -> list[Finding]:
        """The end of the message, for a caller that feeds it without the
        terminator."""
        if self._mime is not None:
            self._mime.close()
            self._mime_news()
        out, self._out = self._out, []
        return out

    def _partial(self, chunk: bytes, pos: int, end: int) -> None:
        room = self._keep - len(self._carry)
        if room > 0:
            self._carry += chunk[pos : min(end, pos + room)]
        cut = pos + max(room, 0)
        if cut < end and self._blank_tail and _NOT_BLANK.search(chunk, cut, end):
            self._blank_tail = False
        self._carry_len += end - pos

    def _complete(self, chunk: bytes, pos: int, stop: int) -> tuple[bytes, int]:
        if not self._carry_len:
            cut = pos + self._keep
            if cut < stop:
                self._blank_tail = _NOT_BLANK.search(chunk, cut, stop) is None
                return chunk[pos:cut], stop - pos
            return chunk[pos:stop], stop - pos
        self._partial(chunk, pos, stop)
        line, length = self._carry, self._carry_len
        self._carry, self._carry_len = b"", 0
        return line, length

    def _scan_body(self, chunk: bytes, pos: int) -> int:
        """Check whole body lines from ``pos`` (a line start) at C speed; return where
        line-by-line handling must resume (a line the MIME reader needs, or the last
        partial line)."""
        mime = self._mime
        mode = mime.mode if mime is not None else 0
        if mode == ALL:
            return pos
        end = chunk.rfind(b"\n", pos) + 1
        if end <= pos:
            return pos
        if mode == DASHES:
            if chunk.startswith(b"--", pos) or chunk.startswith(b".--", pos):
                return pos
            m = _CANDIDATE.search(chunk, pos, end)
            if m is not None:
                end = m.start() + 1
        self._long_lines(chunk, pos, end)
        return end

    def _long_lines(self, chunk: bytes, pos: int, end: int) -> None:
        check = self.c.body_line_length
        if check.limit is None or "body_line_length" in self._fired:
            return
        width = check.limit + 2  # a line of ``limit`` octets plus CRLF fits
        while end - pos > width:
            nl = chunk.rfind(b"\n", pos, pos + width)
            if nl < 0:
                self._long_body_line()
                return
            pos = nl + 1

    def _long_body_line(self) -> None:
        check = self.c.body_line_length
        self._fire(
            finding(
                "body_line_length",
                "SG-CHK-BODY-LINE",
                f"body line over {check.limit} octets",
                check,
                554,
                "5.6.0 Message refused: body line too long",
            )
        )

    # -- lines ------------------------------------------------------------------
    def _line(self, line: bytes, length: int) -> None:
        whole = length == len(line)
        blank_tail, self._blank_tail = self._blank_tail, True
        crlf, self._crlf = self._crlf, line.endswith(b"\r\n") if whole else True
        part_header = False
        mime = self._mime
        if mime is not None:
            text = line
            if crlf and line and line[0] == 0x2E:  # RFC 5321 §4.5.2: unstuff
                if line == b".\r\n":  # the end of data
                    mime.close()
                    self._mime_news()
                    return
                text = line[1:]
            if mime.mode != 0:
                part_header = mime.line(text, whole, blank_tail)
                if mime.parts or mime.failure:
                    self._mime_news()
        if self._header:
            self._header_line(line, length)
        elif part_header:
            self._header_line_length(length)
        elif over(self.c.body_line_length, length - 2):
            self._long_body_line()

    def _header_line(self, line: bytes, length: int) -> None:
        c = self.c
        first = line[0] if line else -1
        if first not in (0x20, 0x09, 0x0D, 0x0A) and not starts_field(line):
            # RFC 5322 §2.2: the first line that is neither a field nor a continuation
            # starts the body, as MTAs read it (no empty line needed).
            self._end_field()
            self._header = False
            if over(c.body_line_length, length - 2):
                self._long_body_line()
            return
        self._header_size += length
        if over(c.header_size, self._header_size):
            self._fire(
                finding(
                    "header_size",
                    "SG-CHK-HEADER-SIZE",
                    f"header section over {c.header_size.limit} octets",
                    c.header_size,
                    554,
                    "5.6.0 Message refused: header section too large",
                )
            )
        self._header_line_length(length)
        if line in (b"\r\n", b"\n"):  # end of the header section
            self._end_field()
            self._header = False
            return
        if first == 0x20 or first == 0x09:  # a continuation line
            if self._id_text is not None and len(self._id_text) < ID_LIMIT:
                self._id_text += _text(line)
            if self._addresses is not None:
                self._addresses.feed(_text(line))
                self._uncounted |= length > len(line)
            return
        self._end_field()
        if self._want_id and is_message_id_field(line):
            self._want_id = False  # the first one: the one Postfix logs and email reads
            self._id_text = _text(line).partition(":")[2]
        if c.to_cc_count.limit is not None:  # the only check that reads a field's text
            self._to_cc_field(_text(line), length > len(line))
        if (first == 0x52 or first == 0x72) and c.received_count.limit is not None:
            self._received_field(line)

    def _received_field(self, line: bytes) -> None:
        """Count a Received: field (RFC 5321 §6.3: a mail loop shows as many of them)."""
        if line[:8].lower() != b"received" or line[8:].lstrip(b" \t")[:1] != b":":
            return
        self._received += 1
        c = self.c
        if over(c.received_count, self._received):
            self._fire(
                finding(
                    "received_count",
                    "SG-CHK-RECEIVED-COUNT",
                    f"{self._received} Received: fields (limit {c.received_count.limit}): "
                    "a mail loop",
                    c.received_count,
                    554,
                    "5.4.6 Routing loop detected: too many Received: fields",
                )
            )

    def _header_line_length(self, length: int) -> None:
        c = self.c
        if over(c.header_line_length, length - 2):
            self._fire(
                finding(
                    "header_line_length",
                    "SG-CHK-HEADER-LINE",
                    f"header line over {c.header_line_length.limit} octets",
                    c.header_line_length,
                    554,
                    "5.6.0 Message refused: header line too long",
                )
            )

    def _to_cc_field(self, text: str, cut: bool) -> None:
        """A field starts: count its addresses if it is To or Cc."""
        name, sep, value = text.partition(":")
        if not sep or name.strip().lower() not in _ADDR_FIELDS:
            return
        self._addresses = AddressCount()
        self._addresses.feed(value)
        self._uncounted = cut

    def _end_field(self) -> None:
        if self._id_text is not None:
            self.message_id = msg_id(self._id_text[:ID_LIMIT])
            self._id_text = None
        addresses, self._addresses = self._addresses, None
        if addresses is None:
            return
        c = self.c
        self._to_cc += addresses.count
        if self._uncounted:  # part of a line was not kept: it may hold more
            why = f"a To/Cc line over {self._keep} octets: its addresses not counted"
        elif over(c.to_cc_count, self._to_cc):
            why = f"{self._to_cc} addresses in To/Cc (limit {c.to_cc_count.limit})"
        else:
            return
        self._fire(
            finding(
                "to_cc_count",
                "SG-CHK-TO-CC-COUNT",
                why,
                c.to_cc_count,
                554,
                "5.6.0 Message refused: too many To/Cc addresses",
            )
        )

    # -- MIME parts ---------------------------------------------------------------
    def _mime_news(self) -> None:
        mime = self._mime
        if mime is None:
            return
        if mime.parts:
            parts, mime.parts = mime.parts, []
            for part in parts:
                self._part(part)
            if self.parts is not None:
                self.parts += parts
        if mime.failure:
            self._structure(mime.failure)
            self._mime = None

    def _part(self, part: Part) -> None:
        c = self.c
        ctype = part.content_type
        if pattern_fires(c.mime_type_pattern, ctype):
            self._fire(
                finding(
                    "mime_type_pattern",
                    "SG-CHK-MIME-TYPE",
                    f"MIME part of type {ctype}",
                    c.mime_type_pattern,
                    554,
                    "5.7.1 Message refused: content type not allowed",
                )
            )
        for enc in part.transfer_encodings:
            if pattern_fires(c.transfer_encoding_pattern, enc):
                self._fire(
                    finding(
                        "transfer_encoding_pattern",
                        "SG-CHK-TRANSFER-ENCODING",
                        f"transfer encoding {enc}",
                        c.transfer_encoding_pattern,
                        554,
                        "5.6.0 Message refused: transfer encoding not allowed",
                    )
                )
        for name in part.names:
            self._filename(name)

    def _filename(self, name: str) -> None:
        c = self.c
        size = octets(name)
        if over(c.mime_filename_length, size):
            self._fire(
                finding(
                    "mime_filename_length",
                    "SG-CHK-MIME-FILENAME-LENGTH",
                    f"MIME file name of {size} octets (limit {c.mime_filename_length.limit})",
                    c.mime_filename_length,
                    554,
                    "5.7.1 Message refused: attachment file name too long",
                )
            )
        if pattern_fires(c.mime_filename_pattern, name):
            self._fire(
                finding(
                    "mime_filename_pattern",
                    "SG-CHK-MIME-FILENAME",
                    f"attachment {name!r} matches the file name patterns",
                    c.mime_filename_pattern,
                    554,
                    "5.7.1 Message refused: attachment type not allowed",
                )
            )

    def _structure(self, why: str) -> None:
        """The MIME reader stopped: fail closed. The mime_structure check fires; when
        it is off, every MIME check that is on fires with its own action."""
        self.refused = why
        c = self.c
        s = c.mime_structure
        text = "5.6.0 Message refused: MIME structure not accepted"
        if s.enabled:
            self._fire(finding("mime_structure", "SG-CHK-MIME-STRUCTURE", why, s, 554, text))
            return
        for name, event_id, check in _mime_checks(c):
            if check.enabled:
                message = f"{why}: MIME parts not checked"
                self._fire(finding(name, event_id, message, check, 554, text))

    def _fire(self, f: Finding) -> None:
        if f.check not in self._fired:
            self._fired.add(f.check)
            self._out.append(f)
