"""TLS contexts for the gateway: its own certificate towards clients, and the client
side towards the upstream server. TLS 1.2 is the floor (RFC 8996 retired 1.0/1.1).
:func:`secure` upgrades either connection in place on STARTTLS.

Towards the upstream the default is opportunistic encryption without certificate
checks, as between MTAs (Postfix ``smtp_tls_security_level = may``); ``verify``
turns on certificate and host name checks.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Final, cast

from smtpguard.gateway.flow import WRITE_HIGH, WRITE_LOW

# Seconds a STARTTLS handshake may take, with the client or with the server.
TLS_HANDSHAKE_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class TlsContexts:
    server: ssl.SSLContext | None  # None: the gateway has no certificate
    client: ssl.SSLContext
    upstream_hostname: str | None = None  # for SNI and checks when verifying


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_context(verify: bool = False, cafile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def contexts(
    certfile: str | None,
    keyfile: str | None,
    verify_upstream: bool = False,
    cafile: str | None = None,
    upstream_hostname: str | None = None,
) -> TlsContexts:
    server = server_context(certfile, keyfile) if certfile else None
    return TlsContexts(
        server,
        client_context(verify_upstream, cafile),
        upstream_hostname if verify_upstream else None,
    )


async def secure(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
) -> asyncio.Transport:
    """The TLS handshake on ``transport`` (STARTTLS), within ``TLS_HANDSHAKE_TIMEOUT``;
    the new transport, with the shell's write limits (it starts with the defaults)."""
    new = cast(
        asyncio.Transport,
        await loop.start_tls(
            transport,
            protocol,
            ctx,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
        ),
    )
    new.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
    return new
