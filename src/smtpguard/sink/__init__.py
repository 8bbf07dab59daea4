"""Built-in mailbox: an aiosmtpd server on loopback that stores mail in a Maildir.

It is the gateway's embedded default upstream (``smtpguard serve`` with no
``--upstream``) and runs alone as ``smtpguard sink``. Each message is stored as
received (dot-unstuffed by aiosmtpd), line endings turned to LF as Maildir readers
expect, with ``Return-Path`` and ``X-Original-To`` headers for the envelope.
``sink/lab.py`` adds a protocol log and the Exchange 5.5 IMS emulation for labs.
"""

from __future__ import annotations

import asyncio
import mailbox
import os
import socket
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from smtpguard.logs import ImsLog

from .lab import DEFAULT_DATA_TIMEOUT, LabSMTP

# No size cap of its own: the gateway's policy decides what is too big.
DATA_SIZE_LIMIT = None


def return_path(mail_from: str | None) -> str:
    """The reverse-path without its angle brackets: aiosmtpd hands the null sender
    (``MAIL FROM:<>``) over as ``"<>"``, which must become ``Return-Path: <>``."""
    path = (mail_from or "").strip()
    if path.startswith("<") and path.endswith(">"):
        path = path[1:-1]
    return path


class MaildirHandler:
    """aiosmtpd handler that files each message into a Maildir."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.box = mailbox.Maildir(self.path, create=True)
        self.delivered = 0

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if isinstance(content, str):  # pragma: no cover - decode_data is off
            content = content.encode("utf-8", "surrogateescape")
        key = self.store(envelope.mail_from, envelope.rcpt_tos, content)
        return f"250 2.0.0 Ok: queued as {key}"

    def store(self, mail_from: str | None, rcpt_tos: list[str], content: bytes) -> str:
        """File one message (dot-unstuffed, CRLF line ends); returns its Maildir key."""
        head = (
            f"Return-Path: <{return_path(mail_from)}>\r\nX-Original-To: {', '.join(rcpt_tos)}\r\n"
        ).encode("utf-8", "surrogateescape")
        key = self.box.add((head + content).replace(b"\r\n", b"\n"))
        self.delivered += 1
        return str(key)


async def start_sink(
    host: str,
    port: int,
    maildir: str | os.PathLike[str],
    hostname: str = "smtpguard-sink",
    sock: socket.socket | None = None,
    *,
    protocol_log: ImsLog | None = None,
    emulate: str | None = None,
    data_timeout: float = DEFAULT_DATA_TIMEOUT,
) -> tuple[asyncio.base_events.Server, int, MaildirHandler]:
    """Start the mailbox on ``host:port`` (port 0 picks one) or on an already bound
    ``sock``; returns the server, the bound port and the handler. With a
    ``protocol_log`` or ``emulate="ims"`` each session is a :class:`LabSMTP`
    (``sink/lab.py``); without either, aiosmtpd's own ``SMTP``."""
    loop = asyncio.get_running_loop()
    handler = MaildirHandler(maildir)
    common: dict[str, Any] = {
        "hostname": hostname,
        "data_size_limit": DATA_SIZE_LIMIT,
        "enable_SMTPUTF8": True,
        "ident": "smtpguard built-in mailbox",
    }

    def factory() -> Any:
        if protocol_log is None and emulate is None:
            return SMTP(handler, **common)
        return LabSMTP(
            handler,
            protocol_log=protocol_log,
            emulate=emulate,
            data_timeout=data_timeout,
            **common,
        )

    if sock is not None:
        server = await loop.create_server(factory, sock=sock)
    else:
        server = await loop.create_server(factory, host, port, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    return server, bound, handler
