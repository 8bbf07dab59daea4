"""Duplicate suppression, the pure part: the message digest, the transaction key,
the queue ID of a 250 reply, and the two actions the session emits.

Theory of operation (docs/design.md#shared-state): the digest is a SHA-256 of the message octets as
the client sent them (dot-stuffing and terminator included), fed chunk by chunk as
they stream, so nothing is buffered. At the client's end of data the key is a
SHA-256 over the sender, the recipients the server accepted (sorted: the same set in
another order is the same transaction) and that digest. The session then emits
:class:`DedupeLookup` and holds the final dot until the driver answers with the
stored queue ID or None; only a server 250 to the final dot makes it emit
:class:`DedupeRecord`, with the queue ID the reply names (or, when it names none,
the first 16 hex digits of the key, so the answer to a copy still names one entry).
Addresses are compared as the server reads them (core/address.py: brackets and
source route removed, quotes and backslashes removed), the domain case-insensitive
(RFC 5321 §2.4).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Final

from smtpguard.core.address import parse_path
from smtpguard.core.grammar import parse_command

KEY_VERSION = b"smtpguard-dedupe-1"
QUEUE_ID_LIMIT = 64  # octets of a queue ID kept (it is shown to the client again)
# How servers name the queue entry in their 250 to the final dot: Postfix "queued as
# 4TqAbC1", Exim "id=1rXyZ-0001", Exchange "[InternalId=123, ...]", Sendmail and
# OpenSMTPD "x1234567 Message accepted", qmail "qp 12345".
_QUEUED = re.compile(
    r"(?:queued as|queue id|\bid=|InternalId=|\bqp)\s*<?([!-~]+?)[>,\]]?(?:\s|$)"
    r"|([!-~]+)\s+Message accepted",
    re.IGNORECASE,
)
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")  # RFC 3463 enhanced status code
_PRINTABLE = re.compile(r"[^!-~]")


class DedupeLookup:
    """Look ``key`` up in the shared store; answer with ``dedupe_result(queue_id or
    None, now)``. The final dot is held until then.

    An action (core/actions.py), and a native class for the same reason."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key: Final = key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DedupeLookup):
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash((self.key,))

    def __repr__(self) -> str:
        return f"DedupeLookup(key={self.key!r})"


class DedupeRecord:
    """The server accepted the message: remember ``key`` with ``queue_id`` for the
    configured window (fire and forget). An action, as :class:`DedupeLookup`."""

    __slots__ = ("key", "queue_id")

    def __init__(self, key: str, queue_id: str) -> None:
        self.key: Final = key
        self.queue_id: Final = queue_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DedupeRecord):
            return NotImplemented
        return self.key == other.key and self.queue_id == other.queue_id

    def __hash__(self) -> int:
        return hash((self.key, self.queue_id))

    def __repr__(self) -> str:
        return f"DedupeRecord(key={self.key!r}, queue_id={self.queue_id!r})"


class MessageDigest:
    """Streaming SHA-256 over one message's octets."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, part: bytes) -> None:
        self._h.update(part)

    def digest(self) -> bytes:
        return self._h.digest()


def fold_address(addr: str) -> str:
    """An address as compared for duplicates: the domain in lower case."""
    local, at, domain = addr.rpartition("@")
    return f"{local}@{domain.lower()}" if at else addr


def transaction_key(mail_from: str, rcpts: Iterable[str], digest: bytes) -> str:
    """The key of one transaction: envelope and message digest, as hex."""
    h = hashlib.sha256(KEY_VERSION)
    h.update(b"\0" + fold_address(mail_from).encode("utf-8", "surrogateescape"))
    for rcpt in sorted({fold_address(r) for r in rcpts}):
        h.update(b"\0" + rcpt.encode("utf-8", "surrogateescape"))
    h.update(b"\0" + digest)
    return h.hexdigest()


def queue_id(text: str) -> str:
    """The queue ID in a 250 reply's text, or "" when it names none (see _QUEUED; a
    last word with a digit in it, not a status code, is taken too). Printable ASCII
    only, bounded: it is sent back to a client in a reply."""
    m = _QUEUED.search(text)
    if m is not None:
        found = m.group(1) or m.group(2)
    else:
        words = [w for w in text.split() if not _STATUS.fullmatch(w)]
        found = words[-1] if words and any("0" <= c <= "9" for c in words[-1]) else ""
    return _PRINTABLE.sub("", found)[:QUEUE_ID_LIMIT]


def already_accepted(queue: str) -> bytes:
    """The reply to a suppressed copy; ``queue`` empty: one that names nothing
    (``[dedupe] answer = "ok"``)."""
    if not queue:
        return b"250 2.0.0 Ok\r\n"
    return f"250 2.0.0 Already accepted as {queue}\r\n".encode("ascii", "replace")


class Tracker:
    """One session's transaction as duplicate suppression sees it: the envelope the
    server accepted, the digest of the message streaming, the held end of the
    terminator, and the key of the message whose final dot went to the server."""

    __slots__ = ("digest", "held", "mail_from", "rcpts", "sent_key")

    def __init__(self) -> None:
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.digest: MessageDigest | None = None
        self.held = b""  # the last octets of the terminator, not yet relayed
        self.sent_key: str | None = None  # its final reply, if 250, records this key

    def mail_accepted(self, line: bytes) -> None:
        """The server said 2xx to this MAIL line: a new transaction."""
        self.mail_from = _address(line, "FROM")
        self.rcpts = []
        self.digest = None

    def rcpt_accepted(self, line: bytes) -> None:
        addr = _address(line, "TO")
        if addr is not None:
            self.rcpts.append(addr)

    def data_started(self) -> None:
        self.digest = MessageDigest()
        self.held = b""

    def feed(self, part: bytes) -> None:
        if self.digest is not None:
            self.digest.update(part)

    def hold(self, data: bytes | memoryview) -> bytes | memoryview:
        """Of the last bytes relayed for a message, what to send now; the rest (at
        most ``.CRLF``, at least the final LF) is held until the lookup's answer."""
        keep = min(len(data), 3)
        self.held = bytes(data[len(data) - keep :])
        return data[: len(data) - keep]

    def end_key(self) -> str | None:
        """At the client's end of data: the key to look up, or None when the message
        cannot be keyed (no accepted envelope, or nothing held)."""
        digest, self.digest = self.digest, None
        if digest is None or self.mail_from is None or not self.rcpts or not self.held:
            return None
        return transaction_key(self.mail_from, self.rcpts, digest.digest())


def _address(line: bytes, keyword: str) -> str | None:
    cmd = parse_command(line)
    if cmd is None:
        return None
    path = parse_path(cmd.args, keyword)
    return None if path is None else path.mailbox
