"""Streaming checks on message content: header section, body lines, MIME parts.

Theory of operation
-------------------
The inspector sees the raw DATA bytes of one message (as relayed, dot-stuffing
included), chunk by chunk, and never holds more than one line prefix. Header
sections (the message's and each MIME part's) are read line by line: fields are
unfolded (RFC 5322 §2.2.3) up to a cap, and Content-Type, Content-Disposition and
Content-Transfer-Encoding are examined. Bodies are scanned at C speed: long lines by
stepping ``rfind`` over windows of the line limit, MIME boundaries by searching for
``LF --``; only candidate boundary lines drop back to line mode. Multipart
boundaries are tracked as a stack (RFC 2046 §5.1), across any chunking.
Each check fires at most once per message.
"""

from __future__ import annotations

import re
from typing import Final

from smtpguard.core.checks import Finding, finding, octets, over, pattern_finding, pattern_fires
from smtpguard.core.policy import Checks

KEEP: Final = 2048  # octets of a line kept for parsing; the rest is only counted
FIELD_CAP: Final = 16 * 1024  # unfolded header field kept for parsing
_PARAM: Final = re.compile(r"""([A-Za-z0-9_.-]+\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]+)""")
_ADDR_FIELDS: Final = frozenset({"to", "cc"})


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


def _params(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, raw in _PARAM.findall(value):
        v = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
        key = name.lower()
        if key.endswith("*"):  # RFC 2231: charset'lang'value
            key, v = key[:-1], v.split("'", 2)[-1]
        out.setdefault(key, v)
    return out


_QUOTED: Final = re.compile(r'"(?:[^"\\]|\\.)*"')


def _count_addresses(value: str) -> int:
    # Good enough for a limit: one "@" per address outside quoted strings.
    if '"' not in value:
        return value.count("@")
    return _QUOTED.sub("", value).count("@")


class MessageInspector:
    """Feed message chunks (terminator excluded or included, it does not matter);
    collect :class:`Finding` objects from :meth:`feed`."""

    def __init__(self, checks: Checks) -> None:
        self.c = checks
        self._header = True  # in a header section (message or MIME part)
        self._top = True  # ... and it is the message's own
        self._carry = b""  # prefix of the current incomplete line
        self._carry_len = 0  # its true length
        self._field = ""  # header field being unfolded
        self._header_size = 0
        self._to_cc = 0
        self._boundaries: list[bytes] = []  # open multipart delimiters, innermost last
        self._part_type = ""
        self._part_boundary: bytes | None = None
        self._fired: set[str] = set()
        self._out: list[Finding] = []
        self.size = 0

    # -- input -----------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[Finding]:
        self.size += len(chunk)
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

    def _partial(self, chunk: bytes, pos: int, end: int) -> None:
        if len(self._carry) < KEEP:
            self._carry += chunk[pos : min(end, pos + KEEP - len(self._carry))]
        self._carry_len += end - pos

    def _complete(self, chunk: bytes, pos: int, stop: int) -> tuple[bytes, int]:
        if not self._carry_len:
            return chunk[pos : min(stop, pos + KEEP)], stop - pos
        self._partial(chunk, pos, stop)
        line, length = self._carry, self._carry_len
        self._carry, self._carry_len = b"", 0
        return line, length

    def _scan_body(self, chunk: bytes, pos: int) -> int:
        """Check whole body lines from ``pos`` (a line start) at C speed; return where
        line-by-line handling must resume (a boundary candidate or the last partial
        line)."""
        end = chunk.rfind(b"\n", pos) + 1
        if end <= pos:
            return pos
        if self._boundaries:
            if chunk.startswith(b"--", pos):
                return pos
            cand = chunk.find(b"\n--", pos, end)
            if cand >= 0:
                end = cand + 1
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
        if self._header:
            self._header_line(line, length)
        else:
            self._body_line(line, length)

    def _body_line(self, line: bytes, length: int) -> None:
        if over(self.c.body_line_length, length - 2):
            self._long_body_line()
        if not line.startswith(b"--") or not self._boundaries:
            return
        text = line.rstrip(b"\r\n")
        for depth in range(len(self._boundaries) - 1, -1, -1):
            delim = self._boundaries[depth]
            if text == delim + b"--":  # close delimiter: back to the outer part's body
                del self._boundaries[depth:]
                return
            if text == delim:
                del self._boundaries[depth + 1 :]
                self._start_header(top=False)
                return

    def _header_line(self, line: bytes, length: int) -> None:
        c = self.c
        first = line[0] if line else -1
        if first not in (0x20, 0x09, 0x0D, 0x0A) and not starts_field(line):
            # RFC 5322 §2.2: the first line that is neither a field nor a continuation
            # starts the body, as MTAs read it (no empty line needed).
            self._end_field()
            self._end_header()
            self._body_line(line, length)
            return
        if self._top:
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
        if line in (b"\r\n", b"\n"):  # end of this header section
            self._end_field()
            self._end_header()
            return
        text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        if text[:1] in (" ", "\t"):
            if len(self._field) < FIELD_CAP:
                self._field += " " + text.strip()
            return
        self._end_field()
        self._field = text

    def _end_field(self) -> None:
        field, self._field = self._field, ""
        name, sep, value = field.partition(":")
        if not sep:
            return
        name, value = name.strip().lower(), value.strip()
        c = self.c
        if self._top and name in _ADDR_FIELDS:
            self._to_cc += _count_addresses(value)
            if over(c.to_cc_count, self._to_cc):
                self._fire(
                    finding(
                        "to_cc_count",
                        "SG-CHK-TO-CC-COUNT",
                        f"{self._to_cc} addresses in To/Cc (limit {c.to_cc_count.limit})",
                        c.to_cc_count,
                        554,
                        "5.6.0 Message refused: too many To/Cc addresses",
                    )
                )
        elif name == "content-type":
            ctype = value.split(";", 1)[0].strip().lower()
            self._part_type = ctype
            params = _params(value)
            if ctype.startswith("multipart/") and params.get("boundary"):
                self._part_boundary = b"--" + params["boundary"].encode("utf-8", "surrogateescape")
            if pattern_fires(c.mime_type_pattern, ctype):
                self._fire(
                    pattern_finding(
                        "mime_type_pattern",
                        "SG-CHK-MIME-TYPE",
                        f"MIME part of type {ctype}",
                        c.mime_type_pattern,
                        554,
                        "5.7.1 Message refused: content type not allowed",
                    )
                )
            if "name" in params:
                self._filename(params["name"])
        elif name == "content-disposition":
            params = _params(value)
            if "filename" in params:
                self._filename(params["filename"])
        elif name == "content-transfer-encoding":
            enc = value.lower()
            if pattern_fires(c.transfer_encoding_pattern, enc):
                self._fire(
                    pattern_finding(
                        "transfer_encoding_pattern",
                        "SG-CHK-TRANSFER-ENCODING",
                        f"transfer encoding {enc}",
                        c.transfer_encoding_pattern,
                        554,
                        "5.6.0 Message refused: transfer encoding not allowed",
                    )
                )

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
                pattern_finding(
                    "mime_filename_pattern",
                    "SG-CHK-MIME-FILENAME",
                    f"attachment {name!r} matches the file name patterns",
                    c.mime_filename_pattern,
                    554,
                    "5.7.1 Message refused: attachment type not allowed",
                )
            )

    def _start_header(self, top: bool) -> None:
        self._header, self._top = True, top
        self._part_type, self._part_boundary = "", None

    def _end_header(self) -> None:
        self._header = False
        self._top = False
        if self._part_boundary is not None:
            self._boundaries.append(self._part_boundary)
        self._part_boundary = None

    def _fire(self, f: Finding) -> None:
        if f.check not in self._fired:
            self._fired.add(f.check)
            self._out.append(f)
