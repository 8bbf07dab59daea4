"""HAProxy PROXY protocol v1 and v2: parse the header a load balancer sends first,
and build one to send to the mail server. Pure functions on bytes, no I/O.

Specification: "The PROXY protocol, versions 1 & 2" (haproxy doc/proxy-protocol.txt).
v1 is one text line of at most 107 octets; v2 is a 16-octet binary header followed by
the address block and optional TLVs (skipped here).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_MAX = 107  # "PROXY TCP6 ffff:...:ffff ffff:...:ffff 65535 65535\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_BLOCK = 2048  # address block + TLVs we are willing to read


class ProxyError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int
    local: bool  # LOCAL (health check) or UNKNOWN: use the real connection's addresses
    source: tuple[str, int] | None
    dest: tuple[str, int] | None
    length: int  # octets consumed


def parse(buf: bytes) -> ProxyHeader | None:
    """Parse a header at the start of ``buf``; ``None`` if more bytes are needed."""
    if buf[:12] == V2_SIGNATURE[: len(buf[:12])] and buf[:1] == b"\r":
        return _parse_v2(buf) if len(buf) >= 12 else None
    if b"PROXY "[: len(buf)] == buf[:6]:
        return _parse_v1(buf) if len(buf) >= 6 else None
    raise ProxyError("no PROXY protocol header")


def _parse_v1(buf: bytes) -> ProxyHeader | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyError("v1 header longer than 107 octets")
        return None
    parts = buf[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, True, None, None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyError("v1 header: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if parts[1] == "TCP4" else 6
    src, dst = _ip(parts[2], version), _ip(parts[3], version)
    return ProxyHeader(1, False, (src, _port(parts[4])), (dst, _port(parts[5])), end + 2)


def _parse_v2(buf: bytes) -> ProxyHeader | None:
    if len(buf) < 16:
        return None
    if buf[:12] != V2_SIGNATURE:
        raise ProxyError("bad v2 signature")
    ver_cmd, fam, length = buf[12], buf[13], struct.unpack("!H", buf[14:16])[0]
    if ver_cmd >> 4 != 2 or ver_cmd & 0x0F not in (0, 1):
        raise ProxyError("v2 header: unsupported version or command")
    if length > V2_MAX_BLOCK:
        raise ProxyError("v2 header: address block too long")
    if len(buf) < 16 + length:
        return None
    total = 16 + length
    if ver_cmd & 0x0F == 0 or fam >> 4 == 0:  # LOCAL, or AF_UNSPEC
        return ProxyHeader(2, True, None, None, total)
    block = buf[16:total]
    if fam == 0x11 and length >= 12:  # TCP over IPv4
        src4, dst4, sport, dport = struct.unpack("!4s4sHH", block[:12])
        return ProxyHeader(
            2,
            False,
            (str(ipaddress.IPv4Address(src4)), sport),
            (str(ipaddress.IPv4Address(dst4)), dport),
            total,
        )
    if fam == 0x21 and length >= 36:  # TCP over IPv6
        src6, dst6, sport, dport = struct.unpack("!16s16sHH", block[:36])
        return ProxyHeader(
            2,
            False,
            (str(ipaddress.IPv6Address(src6)), sport),
            (str(ipaddress.IPv6Address(dst6)), dport),
            total,
        )
    raise ProxyError("v2 header: unsupported address family or short address block")


def _ip(text: str, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"v1 header: bad address {text!r}") from None
    if addr.version != version:
        raise ProxyError(f"v1 header: {text} is not IPv{version}")
    return str(addr)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535 or (len(text) > 1 and text[0] == "0"):
        raise ProxyError(f"v1 header: bad port {text!r}")
    return int(text)


def build_v1(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {dest[0]} {source[1]} {dest[1]}\r\n".encode()


def build_v2(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(dest[0])
    if src.version != dst.version:  # mixed families: map to IPv6
        src, dst = (
            ipaddress.IPv6Address(f"::ffff:{src}") if src.version == 4 else src,
            ipaddress.IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst,
        )
    fam = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], dest[1])
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(block)) + block
