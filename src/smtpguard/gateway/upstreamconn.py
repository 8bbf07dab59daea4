"""The gateway's connection to the real mail server, one per client session at a time.

Theory of operation. The client's connection (:class:`~smtpguard.gateway.connection.
ClientConnection`) makes an :class:`UpstreamConnection` when the core says
``OpenServer``; the gateway picks the server and starts the connect
(``Gateway.open_upstream``). Everything the upstream reads or suffers (connected,
bytes, lost, its write buffer full or drained) goes back to the client's connection,
which hands it to the core through its one door; nothing here reads SMTP. Bytes the
core writes before the connection exists are kept and sent first once it does,
after the PROXY header towards the server if one is configured. ``close`` (the
core's ``CloseServer``, a fresh connection, the session's end) cancels a connect
still under way and stops every callback into the session.

STARTTLS towards the server (the core's ``StartTls("server")``) upgrades the
transport in place: :meth:`UpstreamConnection.start_tls`; the write limits and a
paused read carry over to the new transport.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

from smtpguard.core.session import Session
from smtpguard.gateway.flow import WRITE_HIGH, WRITE_LOW
from smtpguard.gateway.tls import TlsContexts, secure

__all__ = ["ClientSide", "UpstreamConnection"]


class ClientSide(Protocol):
    """What an upstream connection (and the gateway picking its server) uses of the
    client connection it serves: typed here, not imported, so that this module does
    not import the client's. The client connection names it as a base: mypyc then
    calls it natively from here (a Protocol a class does not name is called through
    Python's method lookup, ~1 % of a message's instructions for the server's
    replies)."""

    tried: list[tuple[str, int]]
    session: Session | None

    def upstream_proxy_header(self) -> bytes: ...
    def upstream_made(self, up: UpstreamConnection) -> None: ...
    def upstream_data(self, up: UpstreamConnection, data: bytes) -> None: ...
    def upstream_lost(self, up: UpstreamConnection) -> None: ...
    def upstream_full(self, up: UpstreamConnection, full: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """The gateway's connection to the real mail server for one client session.

    Bytes written before the connection exists are kept and sent first once it does
    (after the PROXY header); ``connecting`` is the gateway's connect task, cancelled
    when the session gives the connection up.
    """

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Future[Any] | None = None
        self.target: tuple[str, int] | None = None  # the server the gateway picked
        self._closed = False
        self._paused = False  # the client asked us not to read the server
        self._full = False  # told the client our write side is full
        self._early: list[bytes] | None = None  # written before the connection is up
        self._early_size = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        if self._closed:
            transport.abort()
            return
        self.transport = transport
        self.connecting = None
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        if self._paused:
            transport.pause_reading()
        header = self.client.upstream_proxy_header()
        if header:
            transport.write(header)
        early, self._early, self._early_size = self._early, None, 0
        was_full, self._full = self._full, False
        for data in early or ():
            transport.write(data)
        if was_full and transport.get_write_buffer_size() <= WRITE_HIGH:
            self.client.upstream_full(self, False)
        self.client.upstream_made(self)

    async def start_tls(self, loop: asyncio.AbstractEventLoop, tls: TlsContexts) -> None:
        """STARTTLS towards the server: this connection's transport upgraded in place;
        a paused read stays paused."""
        if self.transport is None:
            raise ConnectionError("no upstream connection")
        hostname = tls.upstream_hostname  # set when the certificate is checked
        if hostname is not None and self.target is not None:
            hostname = self.target[0]  # the server this connection went to
        new = await secure(
            loop, self.transport, self, tls.client, server_side=False, server_hostname=hostname
        )
        self.transport = new
        if self._paused:
            new.pause_reading()

    def connect_failed(self) -> None:
        self.connecting = None
        if not self._closed:
            self._closed = True
            self.client.upstream_lost(self)

    def data_received(self, data: bytes) -> None:
        self.client.upstream_data(self, data)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
            self.client.upstream_lost(self)

    def pause_writing(self) -> None:
        self.client.upstream_full(self, True)

    def resume_writing(self) -> None:
        self.client.upstream_full(self, False)

    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            return
        if self.transport is None:
            if self._early is None:
                self._early = []
            self._early.append(bytes(data))
            self._early_size += len(data)
            if self._early_size > WRITE_HIGH and not self._full:
                self._full = True
                self.client.upstream_full(self, True)
            return
        self.transport.write(data)

    def pause(self) -> None:
        self._paused = True
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def close(self, abort: bool) -> None:
        """Close on the core's request: no callbacks into the session after this."""
        self._closed = True
        self._early = None
        task, self.connecting = self.connecting, None
        if task is not None and not task.done():
            task.cancel()
        t = self.transport
        if t is not None and not t.is_closing():
            if abort:
                t.abort()
            else:
                t.close()
