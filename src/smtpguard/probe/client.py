"""A minimal SMTP client on asyncio streams, for diagnosis only.

The probe must control exactly which bytes go out and when (one write per segment,
TCP_NODELAY, gaps), so it does not use :mod:`smtplib`. Replies are framed on LF and
assembled by the core's :class:`~smtpguard.core.grammar.ReplyAssembler`; nothing here
parses replies a second time. Every wait is bounded by a timeout; on a timeout or a
lost connection the client is considered unusable and the caller closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

from smtpguard.core.grammar import CRLF, REPLY_LINE_LIMIT, LineError, Reply, ReplyAssembler


class ProbeError(Exception):
    """Base class of the probe's session errors."""


class ConnectFailed(ProbeError):
    """The TCP connection (or the TLS handshake) could not be made."""


class ReplyTimeout(ProbeError):
    """The peer sent no complete reply within the timeout."""


class ConnectionLost(ProbeError):
    """The peer closed the connection before a complete reply."""


class BadReply(ProbeError):
    """The peer sent something that is not an SMTP reply."""


def _unverified_context() -> ssl.SSLContext:
    """The probe reports whether TLS works through the path, not whether the
    certificate is trusted: no verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SmtpClient:
    """One SMTP connection. Create with :meth:`connect`; always :meth:`close`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.timeout = timeout
        self._assembler = ReplyAssembler()
        self._closed = False
        # Set after a timeout or a lost connection: the dialogue is out of step, so
        # quit() just closes instead of waiting for a 221 that will not come.
        self.broken = False

    @classmethod
    async def connect(
        cls, host: str, port: int, timeout: float, implicit_tls: bool = False
    ) -> SmtpClient:
        """TCP connection; with ``implicit_tls`` the TLS handshake comes first (port
        465, RFC 8314), before the greeting."""
        ctx = _unverified_context() if implicit_tls else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    limit=REPLY_LINE_LIMIT * 4,
                    ssl=ctx,
                    server_hostname=host if ctx else None,
                )
        except TimeoutError as exc:
            raise ConnectFailed(f"connection to {host}:{port} timed out") from exc
        except ConnectionRefusedError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: connection refused") from exc
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            raise ConnectFailed(f"TLS handshake with {host}:{port} failed: {reason}") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConnectFailed(f"cannot connect to {host}:{port}: {reason}") from exc
        return cls(reader, writer, timeout)

    def set_nodelay(self) -> None:
        """Disable Nagle so that each write leaves as its own TCP segment."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            self.broken = True
            raise ReplyTimeout("the peer stopped reading") from exc
        except (ConnectionError, OSError) as exc:
            self.broken = True
            raise ConnectionLost("connection lost while sending") from exc

    async def read_reply(self, timeout: float | None = None) -> Reply:
        """Read one complete (possibly multi-line) reply."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while True:
                    line = await self._reader.readuntil(b"\n")
                    try:
                        reply = self._assembler.add(line)
                    except LineError as exc:
                        self.broken = True
                        shown = line[:80].decode("utf-8", "replace").strip()
                        raise BadReply(f"{exc.reason}: {shown!r}") from exc
                    if reply is not None:
                        return reply
        except TimeoutError as exc:
            self.broken = True
            raise ReplyTimeout(f"no reply within {limit:g} s") from exc
        except asyncio.IncompleteReadError as exc:
            self.broken = True
            raise ConnectionLost("the peer closed the connection") from exc
        except asyncio.LimitOverrunError as exc:
            self.broken = True
            raise BadReply("reply line too long") from exc
        except (ConnectionError, OSError) as exc:
            self.broken = True
            raise ConnectionLost(f"connection lost: {exc}") from exc

    async def poll_reply(self, wait: float) -> Reply | None:
        """A reply if one starts within ``wait`` seconds, else ``None``.

        Silence is an answer here (the session stays usable); a reply that has begun
        is read to its end with the normal timeout.
        """
        try:
            return await self.read_reply(timeout=wait)
        except ReplyTimeout:
            if self._assembler.pending:
                return await self.read_reply()
            self.broken = False
            return None

    async def command(self, line: str) -> Reply:
        await self.send(line.encode("utf-8", "surrogateescape") + CRLF)
        return await self.read_reply()

    async def timed_reply(self) -> tuple[Reply, float]:
        """Read a reply and return it with the seconds it took to arrive."""
        start = time.monotonic()
        reply = await self.read_reply()
        return reply, time.monotonic() - start

    async def starttls(self, server_hostname: str) -> str:
        """Upgrade to TLS (after a 220 to STARTTLS). Returns ``"TLSv1.3 CIPHER"``.

        The certificate is not verified: the probe reports whether TLS works through
        the path, not whether the certificate is trusted.
        """
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.start_tls(_unverified_context(), server_hostname=server_hostname)
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError) as exc:
            raise ConnectFailed(f"TLS handshake failed: {exc or type(exc).__name__}") from exc
        return self.tls_description() or "TLS"

    def tls_description(self) -> str | None:
        """``"TLSv1.3 CIPHER"`` on a TLS connection, else ``None``."""
        obj = self._writer.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0] if cipher else ''}".strip()

    async def quit(self) -> None:
        """Polite end: QUIT, read 221 if it comes, close. Never raises."""
        if self._closed:
            return
        if self.broken:
            await self.close()
            return
        with contextlib.suppress(ProbeError):
            await self.send(b"QUIT" + CRLF)
            await self.read_reply(timeout=min(self.timeout, 5.0))
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._writer.wait_closed()
