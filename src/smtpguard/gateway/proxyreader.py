"""The PROXY protocol header a trusted load balancer sends before the client's SMTP.

Theory of operation: a connection from an address in ``access.proxy_from`` starts
with a header (v1 text or v2 binary) naming the real client. :class:`ProxyReader`
collects the bytes read until :func:`smtpguard.proxyproto.parse` has a whole header,
then hands back the header and whatever followed it in the same reads (the client's
first SMTP bytes). The buffer is bounded: ``parse`` refuses a v1 header longer than
107 octets and a v2 address block over its limit, so at most one read past the
longest header is ever held. No I/O here; the shell owns the socket and the deadline.
"""

from __future__ import annotations

from smtpguard.proxyproto import ProxyError, ProxyHeader, parse

__all__ = ["ProxyError", "ProxyReader"]


class ProxyReader:
    """Feed it what is read; it answers once with the header and the bytes after it."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.rest = b""  # the client's bytes that followed the header

    def feed(self, data: bytes) -> ProxyHeader | None:
        """The header once complete (then :attr:`rest` holds what followed it), None
        while more bytes are needed. Raises :class:`ProxyError` for anything that is
        not a valid header."""
        buf = self._buf
        buf += data
        header = parse(buf)
        if header is None:
            return None
        self.rest = bytes(buf[header.length :])
        self._buf = bytearray()
        return header
