"""Read the target's mailbox: which probe messages really arrived, and how.

The probe never trusts replies alone for smuggling: a path can hide an end of data
(a gateway that swallows the server's early reply) or claim one that did nothing. When
the mailbox the target delivers to is readable (``--maildir DIR`` or ``--mbox FILE``)
the probe looks for its messages there by Message-ID.

A *Maildir* is read from ``new/`` and ``cur/``; a directory without those is read as
one message per regular file (e.g. ``smtp-sink -d``). An *mbox* is split on its
``From`` separator lines. Only the header section of each message is parsed (for its
Message-ID); the raw bytes are kept so a carrier's body can be searched. Each file is
read once; an mbox is read on from where the last scan stopped.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*<([^>\r\n]+)>")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MBOX_FROM = re.compile(rb"(?m)^From ")


def message_id(raw: bytes) -> str | None:
    """The Message-ID (without ``<>``) in the header section of ``raw``."""
    end = _HEADER_END.search(raw)
    head = raw[: end.start()] if end else raw
    m = _MESSAGE_ID.search(head)
    return m[1].decode("ascii", "replace") if m else None


class MailboxError(Exception):
    """The mailbox cannot be read (a one-line reason for the user)."""


class Mailbox:
    """A growing map Message-ID -> raw message of one mailbox."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        if kind not in ("maildir", "mbox"):
            raise ValueError(kind)
        self.path = Path(path)
        self.kind = kind
        self.messages: dict[str, bytes] = {}
        self._seen: set[Path] = set()
        self._offset = 0
        self._pending = b""

    def check(self) -> None:
        """Raise :class:`MailboxError` unless the mailbox can be read (it may be empty:
        an mbox that does not exist yet is fine, its directory must exist)."""
        if self.kind == "maildir":
            if not self.path.is_dir():
                raise MailboxError(f"--maildir {self.path}: not a directory")
        elif not (self.path.is_file() or self.path.parent.is_dir()):
            raise MailboxError(f"--mbox {self.path}: no such file or directory")
        try:
            self.scan()
        except OSError as exc:
            raise MailboxError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def scan(self) -> None:
        """Read what arrived since the last scan."""
        if self.kind == "maildir":
            self._scan_maildir()
        else:
            self._scan_mbox()

    def _files(self) -> list[Path]:
        subdirs = [self.path / "new", self.path / "cur"]
        if any(d.is_dir() for d in subdirs):
            dirs = [d for d in subdirs if d.is_dir()]
        else:
            dirs = [self.path]
        return [p for d in dirs for p in d.iterdir() if p.is_file()]

    def _scan_maildir(self) -> None:
        for path in self._files():
            # A Maildir message moves from new/ to cur/ when read: key on the unique
            # part of the name, before any ":2," flags.
            key = path.parent.parent / path.name.split(":", 1)[0]
            if key in self._seen:
                continue
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # moved to cur/ meanwhile: found next scan
                continue
            self._seen.add(key)
            self._add(raw)

    def _scan_mbox(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._pending + data
        starts = [m.start() for m in _MBOX_FROM.finditer(data)]
        if not starts:
            self._pending = data
            return
        # The last message may still be being written: it is parsed again on every
        # scan (the newest version wins) until a separator after it makes it final.
        for begin, end in itertools.pairwise(starts):
            self._add(data[begin:end])
        self._pending = data[starts[-1] :]
        self._add(self._pending)

    def _add(self, raw: bytes) -> None:
        mid = message_id(raw)
        if mid is not None:
            self.messages[mid] = raw
