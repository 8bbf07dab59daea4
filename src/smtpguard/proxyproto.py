"""HAProxy PROXY protocol v1 and v2: parse the header a load balancer sends first,
and build one to send to the mail server. Pure functions on bytes, no I/O.

Specification: "The PROXY protocol, versions 1 & 2" (haproxy doc/proxy-protocol.txt).
v1 is one text line of at most 107 octets; v2 is a 16-octet binary header followed by
the address block and optional TLVs (skipped here).

Incremental use: call :func:`parse` on everything received so far. It returns
``None`` while the header is incomplete, a :class:`ProxyHeader` once it is whole
(``length`` octets belong to it; the rest is the client's SMTP stream), or raises
:class:`ProxyError` as soon as the bytes cannot become a valid header. A header is
at most ``V1_MAX`` or ``16 + V2_MAX_BLOCK`` octets, so re-parsing the growing prefix
costs a bounded amount per call and a peer cannot make the caller buffer more.

A v1 header is read on bytes, field by field, as the specification's grammar has
it: TCP4 carries dotted-quad IPv4 addresses, TCP6 IPv6 addresses in their textual
form (RFC 4291 §2.2, hex digits, colons and dots only: no ``%zone``, which
``ipaddress`` would accept with any bytes after it, tab and LF included), ports
are ASCII decimal digits. Whatever does not fit is a :class:`ProxyError`, so an
address handed on (to XCLIENT, to an upstream PROXY header, to the logs) is one
that ``ipaddress`` prints back the same way, in printable ASCII.

Addresses are returned as the header states them (an IPv4-mapped IPv6 address
stays IPv6; access rules unmap it). ``local`` means "use the connection's own
addresses": v2 LOCAL (the balancer's health check), v1 UNKNOWN, v2 AF_UNSPEC, and
v2 AF_UNIX (a Unix-socket client has no IP address to report).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass


class ProxyVersion(enum.StrEnum):
    """Which PROXY header the gateway sends its upstream (``gateway.upstream_proxy_protocol``)."""

    OFF = "off"
    V1 = "v1"
    V2 = "v2"


V1_MAX = 107  # "PROXY TCP6 ffff:...:ffff ffff:...:ffff 65535 65535\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_BLOCK = 2048  # address block + TLVs we are willing to read
V2_HEADER = 16  # signature, version/command, family/protocol, length
# Address block sizes by family (spec 2.2): a longer block carries TLVs.
_V2_INET, _V2_INET6, _V2_UNIX = 12, 36, 216
# v1 field alphabets (spec 2.1): dotted-quad IPv4, textual IPv6, decimal ports.
_V1_ADDRESS_BYTES = {4: b"0123456789.", 6: b"0123456789abcdefABCDEF:."}
_V1_PORT_BYTES = b"0123456789"


class ProxyError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int
    local: bool  # LOCAL (health check) or UNKNOWN: use the real connection's addresses
    source: tuple[str, int] | None
    dest: tuple[str, int] | None
    length: int  # octets consumed


def parse(buf: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """Parse a header at the start of ``buf``; ``None`` if more bytes are needed."""
    buf = bytes(buf[: V2_HEADER + V2_MAX_BLOCK])
    if buf[:12] == V2_SIGNATURE[: len(buf[:12])] and buf[:1] == b"\r":
        return _parse_v2(buf) if len(buf) >= 12 else None
    if b"PROXY "[: len(buf)] == buf[:6]:
        return _parse_v1(buf) if len(buf) >= 6 else None
    raise ProxyError("no PROXY protocol header: neither 'PROXY ' (v1) nor the v2 signature")


def _parse_v1(buf: bytes) -> ProxyHeader | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyError("v1 header longer than 107 octets")
        return None
    parts = buf[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, True, None, None, end + 2)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyError("v1 header: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if parts[1] == b"TCP4" else 6
    src, dst = _ip(parts[2], version), _ip(parts[3], version)
    return ProxyHeader(1, False, (src, _port(parts[4])), (dst, _port(parts[5])), end + 2)


def _parse_v2(buf: bytes) -> ProxyHeader | None:
    if len(buf) < V2_HEADER:
        return None
    if buf[:12] != V2_SIGNATURE:
        raise ProxyError("v2 header: bad signature")
    ver_cmd, fam, length = buf[12], buf[13], struct.unpack("!H", buf[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"v2 header: version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyError(f"v2 header: unknown command {command} (0 LOCAL, 1 PROXY)")
    family, transport = fam >> 4, fam & 0x0F
    if family > 3 or transport > 2:
        raise ProxyError(f"v2 header: unknown address family/protocol 0x{fam:02x}")
    if length > V2_MAX_BLOCK:
        raise ProxyError(f"v2 header: address block of {length} octets (limit {V2_MAX_BLOCK})")
    if len(buf) < V2_HEADER + length:
        return None
    total = V2_HEADER + length
    if command == 0 or family == 0:  # LOCAL (addresses ignored), or AF_UNSPEC
        return ProxyHeader(2, True, None, None, total)
    if transport != 1:
        raise ProxyError("v2 header: not a stream (TCP) connection")
    block = buf[V2_HEADER:total]
    if family == 3:  # AF_UNIX: no IP address to report
        if length < _V2_UNIX:
            raise ProxyError(f"v2 header: AF_UNIX block of {length} octets, need {_V2_UNIX}")
        return ProxyHeader(2, True, None, None, total)
    need = _V2_INET if family == 1 else _V2_INET6
    if length < need:
        raise ProxyError(f"v2 header: address block of {length} octets, need {need}")
    n = need // 2 - 2  # bytes per address
    src, dst = block[:n], block[n : 2 * n]
    sport, dport = struct.unpack("!HH", block[2 * n : need])
    make = ipaddress.IPv4Address if family == 1 else ipaddress.IPv6Address
    return ProxyHeader(2, False, (str(make(src)), sport), (str(make(dst)), dport), total)


def _ip(field: bytes, version: int) -> str:
    """The address in a v1 field, strictly as the grammar has it (no ``%zone``)."""
    if not field or not _only(field, _V1_ADDRESS_BYTES[version]):
        raise ProxyError(f"v1 header: bad IPv{version} address {field!r}")
    text = field.decode("ascii")
    try:
        addr = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyError(f"v1 header: bad IPv{version} address {field!r}") from None
    return str(addr)


def _port(field: bytes) -> int:
    """A v1 port: ASCII digits, 0 to 65535, no leading zero."""
    if (
        not field
        or len(field) > 5
        or not _only(field, _V1_PORT_BYTES)
        or (len(field) > 1 and field[:1] == b"0")
        or int(field) > 65535
    ):
        raise ProxyError(f"v1 header: bad port {field!r}")
    return int(field)


def _only(field: bytes, alphabet: bytes) -> bool:
    """Every byte of ``field`` is one of ``alphabet`` (``translate`` deletes them)."""
    return not field.translate(None, alphabet)


def build_v1(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """``PROXY TCP4|TCP6 ...`` for a connection from ``source`` to ``dest``."""
    src, dst = _same_family(source, dest)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {dest[1]}\r\n".encode()


def build_v1_unknown() -> bytes:
    """v1 header that tells the receiver to use the connection's own addresses."""
    return b"PROXY UNKNOWN\r\n"


def build_v2(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """v2 PROXY command over TCP for a connection from ``source`` to ``dest``."""
    src, dst = _same_family(source, dest)
    fam = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], dest[1])
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(block)) + block


def build_v2_local() -> bytes:
    """v2 LOCAL command (a health check from the proxy itself, no addresses)."""
    return V2_SIGNATURE + b"\x20\x00\x00\x00"


def _same_family(
    source: tuple[str, int], dest: tuple[str, int]
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """Both addresses in one family (a header has one): mixed ones become IPv6,
    with the IPv4 one mapped (``::ffff:a.b.c.d``)."""
    for _host, port in (source, dest):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
    # A zone (``fe80::1%eth0``, from the kernel for a link-local peer) names an
    # interface of this host: it means nothing to the server, and v1 has no room for it.
    src = ipaddress.ip_address(source[0].partition("%")[0])
    dst = ipaddress.ip_address(dest[0].partition("%")[0])
    if src.version != dst.version:
        src, dst = (
            ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst)
        )
    return src, dst
