"""MAIL FROM and RCPT TO arguments, read as the server behind the gateway reads them.

Theory of operation. Every envelope check (sender length and patterns, SIZE, the
recipient domains, the parameter refusal) must look at the address the server will
use, or a client writes the address in a form the check skips and the server takes.
RFC 5321 §4.1.2 allows one form, ``"<" [ A-d-l ":" ] Mailbox ">"``; Postfix's smtpd
(with its default ``strict_rfc821_envelopes = no``) reads far more:

1. It splits the command into words at ASCII white space (SP, HT, VT, FF), except
   inside ``<…>`` and ``"…"`` and after a backslash; ``FROM:``/``TO:`` is a word of
   its own, so white space after the colon is allowed and the address is the next
   word. The words after it are the parameters.
2. It removes one pair of angle brackets around that word, if the word starts with
   ``<`` and ends with ``>``: ``TO:victim@evil.test`` is an address like any other.
3. If what remains starts with ``@`` it drops everything up to the first ``:`` (an
   RFC 821 source route: ``<@relay:victim@evil.test>`` goes to evil.test).
4. It reads the rest as RFC 822 address text (phrases, comments, quoted strings,
   ``%`` and ``!`` as operators) and keeps the address in its internal form: quotes
   and backslashes removed (``"a\\"b"@d`` is the mailbox ``a"b@d``).

This module reads the part of that language it can read unambiguously, the same
way, and gives the mailbox in the server's internal form. Anything else (phrases,
comments, several addresses, nested brackets, white space inside brackets, empty
labels, a backslash outside quotes) is ``None``, and the gateway refuses the command
(``501``) instead of forwarding a value no check has seen. The table of forms, with
what Postfix does with each, is in docs/security.md ("policy differentials").

The common ``<local@domain>`` form is recognised by one native loop
(:func:`simple_mailbox`); the character-by-character reader runs only for the rest.
"""

from __future__ import annotations

import re
from typing import Final

# Postfix's ISSPACE on a command line (which holds no CR or LF): ASCII only, so a
# non-ASCII space (U+00A0, U+0085) is part of a word, as the server reads it.
_SPACE: Final = " \t\x0b\x0c"
# RFC 5322 §3.2.3 atext, and any non-ASCII character (RFC 6531 §3.3 UTF8-non-ascii;
# an undecodable byte arrives as a surrogate): what an atom may hold.
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]|[^\x00-\x7f]"
_DOT_STRING: Final = rf"(?:{_ATEXT})+(?:\.(?:{_ATEXT})+)*"
# RFC 5321 §4.1.2 Domain, plus "_" (seen in real host names) and U-labels; no empty
# label, so no trailing dot (Postfix would strip it: the checks would not).
_LABEL: Final = r"(?:[A-Za-z0-9_\-]|[^\x00-\x7f])+"
_HOST: Final = rf"{_LABEL}(?:\.{_LABEL})*"
# RFC 5321 §4.1.3 address literal, for IPv4, IPv6 and general forms alike.
_DOMAIN: Final = re.compile(rf"{_HOST}|\[[A-Za-z0-9.:\-]+\]")
_LOCAL: Final = re.compile(_DOT_STRING)
# RFC 5321 §4.1.2 A-d-l: "@" host *( "," "@" host ). No address literal: Postfix
# cuts the route at the first ":", which an IPv6 literal would hold.
_ROUTE: Final = re.compile(rf"@{_HOST}(?:,@{_HOST})*")


def _atext(c: int) -> bool:
    """RFC 5322 §3.2.3 atext, ASCII: letters, digits and ``!#$%&'*+-/=?^_`{|}~``."""
    if 0x61 <= c <= 0x7A or 0x41 <= c <= 0x5A or 0x30 <= c <= 0x39:
        return True
    return c in (0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2F, 0x3D, 0x3F) or (
        0x5E <= c <= 0x60 or 0x7B <= c <= 0x7E
    )


def simple_mailbox(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is the common form's inside, ASCII only: a
    dot-string, "@", then labels of letters, digits, "_" and "-" joined by dots
    (the regular expression it replaced is kept in tests/core/test_envelope.py as
    its reference). A loop over code points, native once compiled: the expression
    was a generic call on every MAIL and RCPT."""
    i = start
    label = 0  # characters in the current atom or label
    domain = False
    while i < end:
        c = ord(text[i])
        i += 1
        if c == 0x2E:  # "." between two atoms or labels, never first or doubled
            if label == 0:
                return False
            label = 0
        elif c == 0x40:  # the one "@", after a whole atom
            if domain or label == 0:
                return False
            domain = True
            label = 0
        elif domain:
            if not (
                0x61 <= c <= 0x7A or 0x41 <= c <= 0x5A or 0x30 <= c <= 0x39 or c in (0x2D, 0x5F)
            ):
                return False
            label += 1
        elif _atext(c):
            label += 1
        else:
            return False
    return domain and label > 0


class EnvelopePath:
    """A MAIL/RCPT argument as the server reads it.

    ``mailbox``: the address in the server's internal form (source route dropped,
    quotes and backslashes removed), ``""`` for the null path ``<>``; ``domain``:
    what follows its last ``@`` (``""`` if there is none); ``routed``: the local part
    holds ``@``, ``%`` or ``!``, so a server may route on a domain inside it;
    ``params``: the text after the address word, as sent. The routing characters are
    "@" (quoted), the "%" hack and the "!" bang path (Postfix's
    resolve_dequoted_address, allow_percent_hack, swap_bangpath): with the domain
    after the last "@" local to the server, it re-routes on the one inside.

    A value and a native class, as ``grammar.Command`` is: one is built per MAIL and
    RCPT."""

    __slots__ = ("domain", "mailbox", "params", "routed")

    def __init__(self, mailbox: str, domain: str, params: str, routed: bool) -> None:
        self.mailbox: Final = mailbox
        self.domain: Final = domain
        self.params: Final = params
        self.routed: Final = routed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EnvelopePath):
            return NotImplemented
        return (
            self.mailbox == other.mailbox
            and self.domain == other.domain
            and self.params == other.params
            and self.routed == other.routed
        )

    def __hash__(self) -> int:
        return hash((self.mailbox, self.domain, self.params, self.routed))

    def __repr__(self) -> str:
        return (
            f"EnvelopePath(mailbox={self.mailbox!r}, domain={self.domain!r}, "
            f"params={self.params!r}, routed={self.routed!r})"
        )


def parse_path(args: str, keyword: str) -> EnvelopePath | None:
    """Read ``FROM:<addr> PARAMS`` (``keyword`` ``FROM``) or ``TO:…`` (RFC 5321
    §4.1.1.2-3) as Postfix's smtpd reads it; ``None`` when this reader cannot tell
    which address the server would take (the gateway then refuses the command)."""
    n = len(keyword)
    # ASCII only: str.upper() would turn U+017F (long s) into "S".
    if len(args) <= n or args[n] != ":" or not args[:n].isascii() or args[:n].upper() != keyword:
        return None
    start = n + 1
    end = len(args)
    while start < end and args[start] in _SPACE:
        start += 1
    if start == end:
        return None
    if args[start] == "<":  # the common form: <local@domain>, then white space or end
        close = args.find(">", start + 1)
        if close > 0 and (close + 1 == end or args[close + 1] in _SPACE):
            if close == start + 1:
                return EnvelopePath("", "", _params(args, close + 1), False)
            if simple_mailbox(args, start + 1, close):
                mailbox = args[start + 1 : close]
                at = mailbox.rfind("@")
                local = mailbox[:at]
                routed = "%" in local or "!" in local
                return EnvelopePath(mailbox, mailbox[at + 1 :], _params(args, close + 1), routed)
    word_end = _word_end(args, start)
    if word_end < 0:
        return None
    return _read_word(args[start:word_end], _params(args, word_end))


def _params(args: str, i: int) -> str:
    return args[i:].strip(_SPACE)


def _word_end(args: str, i: int) -> int:
    """Where the word starting at ``i`` ends, as Postfix's smtpd_token splits a
    command: at white space outside ``<…>`` (which may nest) and ``"…"``, a backslash
    taking the next character as it is. -1 if a quote or bracket is never closed
    (Postfix: "Bad … address syntax")."""
    n = len(args)
    while i < n:
        c = args[i]
        if c in _SPACE:
            return i
        if c == "<" or c == '"':
            i = _quoted_end(args, i + 1, ">" if c == "<" else '"')
            if i < 0:
                return -1
        elif c == "\\":
            i += 2
        else:
            i += 1
    return n


def _quoted_end(args: str, i: int, last: str) -> int:
    """The index after the ``last`` that closes a section opened before ``i``; inside
    ``<…>`` a ``"`` opens a quoted section and ``<`` a nested one. -1 if unclosed."""
    wanted = [last]
    n = len(args)
    while i < n:
        c = args[i]
        i += 1
        if c == "\\":
            i += 1
        elif c == wanted[-1]:
            wanted.pop()
            if not wanted:
                return i
        elif c == '"':
            wanted.append('"')
        elif c == "<" and wanted[-1] == ">":
            wanted.append(">")
    return -1


def _read_word(word: str, params: str) -> EnvelopePath | None:
    """The address word: brackets, source route, then the mailbox."""
    bracketed = word[0] == "<"
    if bracketed:
        if len(word) < 2 or word[-1] != ">":
            return None
        text = word[1:-1]
    else:
        text = word
    if not text:
        return EnvelopePath("", "", params, False) if bracketed else None
    if text[0] == "@":  # RFC 5321 §4.1.2 A-d-l; RFC 5321 §3.6.1: to be ignored
        colon = text.find(":")
        if colon < 0 or _ROUTE.fullmatch(text, 0, colon) is None:
            return None
        text = text[colon + 1 :]
    if text[:1] == '"':
        local_end = _quoted_local_end(text)
        if local_end < 0:
            return None
        local = _unquote(text[1 : local_end - 1])
        if not local:
            return None
        rest = text[local_end:]
        if rest[:1] != "@":  # a quoted local part alone: read by no check
            return None
        domain = rest[1:]
    else:
        at = text.find("@")
        local = text if at < 0 else text[:at]
        domain = "" if at < 0 else text[at + 1 :]
        if _LOCAL.fullmatch(local) is None:
            return None
        if at < 0:
            routed = "%" in local or "!" in local
            return EnvelopePath(local, "", params, routed)
    if _DOMAIN.fullmatch(domain) is None:
        return None
    routed = "@" in local or "%" in local or "!" in local
    return EnvelopePath(local + "@" + domain, domain, params, routed)


def _quoted_local_end(text: str) -> int:
    """The index after the ``"`` closing the quoted string at the start of ``text``;
    -1 if unclosed or if it holds a control character (RFC 5321 §4.1.2 qtextSMTP,
    quoted-pairSMTP: %d32-126, and non-ASCII under RFC 6531)."""
    i = 1
    n = len(text)
    while i < n:
        c = text[i]
        if c < " " or c == "\x7f":
            return -1
        if c == "\\":
            if i + 1 >= n or text[i + 1] < " " or text[i + 1] == "\x7f":
                return -1
            i += 2
        elif c == '"':
            return i + 1
        else:
            i += 1
    return -1


def _unquote(quoted: str) -> str:
    """A quoted string's content in internal form: each ``\\x`` is ``x``."""
    if "\\" not in quoted:
        return quoted
    out = []
    i = 0
    n = len(quoted)
    while i < n:
        if quoted[i] == "\\":
            i += 1
        out.append(quoted[i])
        i += 1
    return "".join(out)
