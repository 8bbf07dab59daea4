"""SMTP grammar on bytes: command lines, reply lines, limits.

Everything here frames and parses *bytes*; text is decoded only for arguments, with
``surrogateescape`` so that any byte survives a round trip. These parsers are the
single implementation used by the gateway core, the probe and logscan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including the CRLF.
COMMAND_LINE_LIMIT: Final = 512
# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including the CRLF. Servers
# in the wild exceed it (long EHLO AUTH lines), so we accept this much before failing.
REPLY_LINE_LIMIT: Final = 4096
# RFC 5321 §4.5.3.1.6 / RFC 5322 §2.1.1: a text line is at most 1000 octets with CRLF.
TEXT_LINE_LIMIT: Final = 998
# A multi-line reply with more lines than this is treated as a broken server.
REPLY_MAX_LINES: Final = 200

CRLF: Final = b"\r\n"
# Byte values, for ``_CR in line`` (see check_line_bytes).
_CR: Final = 0x0D
_LF: Final = 0x0A
_NUL: Final = 0x00
# RFC 5321 §4.1.1.4: the end of mail data is "CRLF . CRLF".
END_OF_DATA: Final = b"\r\n.\r\n"

_VERB_MAX: Final = 32
# RFC 3463 §2: enhanced status code class.subject.detail
_ENHANCED: Final = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})\b", re.ASCII)


class LineError(ValueError):
    """A line that violates the framing rules (bare CR/LF, NUL)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_line_bytes(line: bytes) -> str | None:
    """Return the name of the first forbidden byte class in a CRLF-stripped line.

    Used for command lines: a bare CR, a bare LF or a NUL inside a command is the
    signature of a smuggling attempt (and never valid, RFC 5321 §2.3.8).
    """
    # A byte's value as the operand (``13 in line``): one memchr. Not ``b"\r" in
    # line``, which first tries the operand as an int and builds (and drops) a
    # TypeError each time, nor ``find()``, a method call whose arguments are parsed
    # from a tuple (Python 3.11): each was several times slower once compiled.
    if _CR in line:
        return "bare CR"
    if _LF in line:
        return "bare LF"
    if _NUL in line:
        return "NUL"
    return None


def frame_reply_line(raw: bytes) -> bytes:
    """A server reply line (ending in LF) as the client may see it: CRLF-framed.

    A line ended by a bare LF is re-framed with CRLF, so a client never gets a reply
    it could frame differently from the gateway; a CR or NUL inside the line (a reply
    that could be read as two) raises :class:`LineError`. Lines longer than
    ``REPLY_LINE_LIMIT`` (terminator included) are refused, whatever the segmentation
    they arrived in.
    """
    if len(raw) > REPLY_LINE_LIMIT:
        raise LineError("reply line too long")
    crlf = raw.endswith(CRLF)
    body = raw[:-2] if crlf else raw[:-1]
    if _CR in body:  # a byte's value: see check_line_bytes
        raise LineError("bare CR in reply line")
    if _NUL in body:
        raise LineError("NUL in reply line")
    return raw if crlf else body + CRLF


class Command:
    """A parsed command line. ``verb`` is upper-case ASCII; ``raw`` keeps the line
    exactly as received, CRLF included, so forwarding never re-serialises.

    A value: equal by its fields, hashable, its fields ``Final`` (read-only once
    compiled, checked by mypy either way). A plain native class, not a frozen
    dataclass: one is built per command line, and mypyc compiles this ``__init__``,
    where a dataclass's is generated at run time and interpreted (~10x the cost).
    """

    __slots__ = ("args", "raw", "verb")

    def __init__(self, verb: str, args: str, raw: bytes) -> None:
        self.verb: Final = verb
        self.args: Final = args
        self.raw: Final = raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Command):
            return NotImplemented
        return self.verb == other.verb and self.args == other.args and self.raw == other.raw

    def __hash__(self) -> int:
        return hash((self.verb, self.args, self.raw))

    def __repr__(self) -> str:
        return f"Command(verb={self.verb!r}, args={self.args!r}, raw={self.raw!r})"

    @property
    def text(self) -> str:
        """The command line without CRLF, for logs."""
        return self.raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")


def parse_command(raw: bytes) -> Command | None:
    """Parse one command line (with or without the CRLF). ``None`` if no verb."""
    line = raw[:-2] if raw.endswith(CRLF) else raw.rstrip(b"\r\n")
    # RFC 5321 §4.1.1: verbs are alphabetic keywords (we allow digits and "-" after
    # the first letter, as extensions such as XEXCH50 do), ended by SP (or a tab).
    # One pass over the verb's bytes as ints, native once compiled: where it ends,
    # whether every byte may be in a verb, whether any is lower case.
    n = len(line)
    sp = 0
    lower = False
    while sp < n:
        c = line[sp]
        if c == 0x20 or c == 0x09:
            break
        if sp >= _VERB_MAX:
            return None  # longer than any verb
        if 0x61 <= c <= 0x7A:
            lower = True
        elif not (0x41 <= c <= 0x5A or 0x30 <= c <= 0x39 or c == 0x2D):
            return None
        sp += 1
    if sp == 0 or not (0x41 <= line[0] <= 0x5A or 0x61 <= line[0] <= 0x7A):
        return None
    verb = line[:sp].decode("ascii")
    if lower:
        verb = verb.upper()
    args = "" if sp == n else line[sp + 1 :].decode("utf-8", "surrogateescape").strip(" \t")
    return Command(verb, args, raw)


@dataclass(frozen=True, slots=True)
class ReplyLine:
    code: int
    last: bool
    text: str


def leading_code(line: bytes) -> int:
    """The number the three leading ASCII digits of ``line`` make; -1 if it does not
    start with three. Byte values, native once compiled: ``bytes.isdigit()`` and
    ``int()`` of a slice would be generic calls, on every reply line."""
    if len(line) < 3:
        return -1
    c0, c1, c2 = line[0], line[1], line[2]
    if not (0x30 <= c0 <= 0x39 and 0x30 <= c1 <= 0x39 and 0x30 <= c2 <= 0x39):
        return -1
    return (c0 - 0x30) * 100 + (c1 - 0x30) * 10 + (c2 - 0x30)


# Numbers in commands are clamped here: more than any size or count we compare with,
# and int() of a longer digit string could raise (sys.int_info.str_digits_check_threshold).
NUMBER_CLAMP: Final = 10**18
_ASCII_UPPER: Final = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def ascii_number(text: str) -> int:
    """The value of ``text`` if it is ``1*DIGIT`` (RFC 5234 DIGIT: ASCII 0-9 only),
    clamped to :data:`NUMBER_CLAMP`; -1 otherwise. ``str.isdigit()`` also takes
    Arabic-Indic and superscript digits (and ``int()`` of a superscript raises): a
    server reads neither as a digit."""
    n = len(text)
    if n == 0:
        return -1
    i = 0
    while i < n:
        c = ord(text[i])
        if c < 0x30 or c > 0x39:
            return -1
        i += 1
    digits = text.lstrip("0")
    if len(digits) > 18:
        return NUMBER_CLAMP
    return int(digits) if digits else 0


def ascii_upper(text: str) -> str:
    """``text`` upper-cased by ASCII rules only, as servers compare keywords
    (strcasecmp): ``str.upper()`` also turns U+017F (long s) into "S" and "ß" into
    "SS"."""
    return text.upper() if text.isascii() else text.translate(_ASCII_UPPER)


def _reply_head(line: bytes) -> tuple[int, bool] | None:
    """Code and last-line flag of a CRLF-stripped reply line (RFC 5321 §4.2):
    ``Reply-code [ SP textstring ]`` ends a reply, ``Reply-code "-" textstring``
    continues it. ``None`` if the line is not a reply line."""
    code = leading_code(line)
    if not 200 <= code <= 599:
        return None
    if len(line) == 3:
        return code, True
    sep = line[3]
    if sep == 0x2D:  # "-"
        return code, False
    if sep == 0x20:  # " "
        return code, True
    return None


def parse_reply_line(raw: bytes) -> ReplyLine | None:
    """Parse one reply line (CRLF optional). ``None`` if it is not a reply line."""
    line = raw.rstrip(b"\r\n")
    head = _reply_head(line)
    if head is None:
        return None
    return ReplyLine(head[0], head[1], line[4:].decode("utf-8", "surrogateescape"))


class Reply:
    """A complete (possibly multi-line) reply. ``raw`` is the bytes as received.

    A value, as :class:`Command` is (and a native class for the same reason: one is
    built per server reply)."""

    __slots__ = ("code", "lines", "raw")

    def __init__(self, code: int, lines: tuple[str, ...], raw: bytes) -> None:
        self.code: Final = code
        self.lines: Final = lines
        self.raw: Final = raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return self.code == other.code and self.lines == other.lines and self.raw == other.raw

    def __hash__(self) -> int:
        return hash((self.code, self.lines, self.raw))

    def __repr__(self) -> str:
        return f"Reply(code={self.code!r}, lines={self.lines!r}, raw={self.raw!r})"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def enhanced(self) -> tuple[int, int, int] | None:
        """RFC 3463 enhanced status code of the first line, if any."""
        if not self.lines:
            return None
        m = _ENHANCED.match(self.lines[0])
        return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None

    def log_lines(self) -> list[str]:
        """One ``"250-text"``-style string per line, as a protocol log shows them."""
        n = len(self.lines)
        return [
            f"{self.code}{' ' if i == n - 1 else '-'}{t}".rstrip() for i, t in enumerate(self.lines)
        ]


def ehlo_keyword(line: str) -> str:
    """The keyword of one EHLO reply line's text (RFC 5321 §4.1.1.1: ``ehlo-keyword
    *( SP ehlo-param )``), upper-cased."""
    words = line.split(None, 1)
    return ascii_upper(words[0]) if words else ""


def ehlo_keywords(reply: Reply) -> frozenset[str]:
    """The extension keywords an EHLO reply offers (its first line is the greeting)."""
    return frozenset(ehlo_keyword(line) for line in reply.lines[1:])


def make_reply(code: int, *lines: str) -> Reply:
    """Build a reply (our own, never a server's) with correct multi-line framing."""
    texts = lines or ("",)
    out = bytearray()
    for i, t in enumerate(texts):
        sep = " " if i == len(texts) - 1 else "-"
        out += f"{code}{sep}{t}".rstrip(" ").encode("utf-8", "surrogateescape") + CRLF
    return Reply(code, tuple(texts), bytes(out))


class ReplyAssembler:
    """Collects reply lines into complete replies (RFC 5321 §4.2.1).

    Feed it lines (with or without their CRLF; ``Reply.raw`` keeps them as fed) with
    :meth:`add`; it returns a :class:`Reply` when the
    last line arrives, else ``None``. A malformed line raises :class:`LineError`.
    """

    __slots__ = ("_code", "_lines", "_raw")

    def __init__(self) -> None:
        self._code = 0
        self._lines: list[str] = []
        self._raw = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._lines)

    def add(self, raw: bytes) -> Reply | None:
        line = raw.rstrip(b"\r\n")
        head = _reply_head(line)
        if head is None:
            raise LineError("malformed reply line")
        code, last = head
        text = line[4:].decode("utf-8", "surrogateescape")
        if not self._lines:
            if last:  # the common case: a one-line reply, no copying
                return Reply(code, (text,), raw)
        elif code != self._code:
            raise LineError("reply code changed inside a multi-line reply")
        elif len(self._lines) >= REPLY_MAX_LINES:
            raise LineError("multi-line reply too long")
        self._code = code
        self._lines.append(text)
        self._raw += raw
        if not last:
            return None
        reply = Reply(code, tuple(self._lines), bytes(self._raw))
        self._lines.clear()
        self._raw.clear()
        return reply
