"""Built-in mailbox: an aiosmtpd server on loopback that stores mail in a Maildir.

It is the gateway's embedded default upstream (``smtpguard serve`` with no
``--upstream``) and runs alone as ``smtpguard sink``. Each message is stored as
received (dot-unstuffed by aiosmtpd), line endings turned to LF as Maildir readers
expect, with ``Return-Path`` and ``X-Original-To`` headers for the envelope.
"""

from __future__ import annotations

import asyncio
import mailbox
import os
import socket
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

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
        head = (
            f"Return-Path: <{return_path(envelope.mail_from)}>\r\n"
            f"X-Original-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode("utf-8", "surrogateescape")
        key = self.box.add((head + content).replace(b"\r\n", b"\n"))
        self.delivered += 1
        return f"250 2.0.0 Ok: queued as {key}"


async def start_sink(
    host: str,
    port: int,
    maildir: str | os.PathLike[str],
    hostname: str = "smtpguard-sink",
    sock: socket.socket | None = None,
) -> tuple[asyncio.base_events.Server, int, MaildirHandler]:
    """Start the mailbox on ``host:port`` (port 0 picks one) or on an already bound
    ``sock``; returns the server, the bound port and the handler."""
    loop = asyncio.get_running_loop()
    handler = MaildirHandler(maildir)

    def factory() -> Any:
        return SMTP(
            handler,
            hostname=hostname,
            data_size_limit=DATA_SIZE_LIMIT,
            enable_SMTPUTF8=True,
            ident="smtpguard built-in mailbox",
        )

    if sock is not None:
        server = await loop.create_server(factory, sock=sock)
    else:
        server = await loop.create_server(factory, host, port, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    return server, bound, handler
