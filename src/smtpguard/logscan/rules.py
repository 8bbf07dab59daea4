"""Small, named detection rules shared by the session tracker and the parsers."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Postfix smtp_proto.c: a greeting made only of these characters makes a Postfix
# client assume a Cisco PIX and switch on its "disable_esmtp delay_dotcrlf"
# work-arounds (resp->str[strspn(resp->str, "20 *\t\n")] == 0).
_PIX_GREETING_CHARS = frozenset("20 *\t\n")
# A masked banner in which something else survived (e.g. a CR turned into text)
# still shows the mask as a long run of asterisks.
_ASTERISK_RUN = re.compile(r"\*{5,}")
# EHLO answered "command unrecognized / not implemented" (RFC 5321 §4.2.4): the
# Mailguard and "inspect esmtp" behaviour that forces a client back to HELO.
EHLO_REJECT_CODES = frozenset({500, 502})
# Message-ID as a server echoes it in its final reply (Exchange "250 2.6.0 <id>").
_ANGLE_ID = re.compile(r"<([^<>\s]+@[^<>\s]+)>")


def is_masked_banner(reply_lines: Sequence[str]) -> bool:
    """True if a 220 greeting (full lines, code included) looks PIX-masked."""
    text = "\n".join(reply_lines)
    if not text:
        return False
    if all(c in _PIX_GREETING_CHARS for c in text):
        return True
    return _ASTERISK_RUN.search(text) is not None


def angle_id(text: str) -> str:
    """The first ``<local@domain>`` in a text, without brackets, or ``""``."""
    m = _ANGLE_ID.search(text)
    return m.group(1) if m else ""


def is_loopback(peer: str) -> bool:
    """Re-injection from a local content filter is not a second delivery."""
    p = peer.lower()
    return (
        "127.0.0." in p
        or "[::1]" in p
        or p in {"::1", "localhost"}
        or p.startswith(("localhost[", "localhost ", "127.", "::1"))
    )


def strip_port(endpoint: str) -> str:
    """``192.0.2.1:41234`` → ``192.0.2.1``; ``[2001:db8::1]:25`` → ``2001:db8::1``.

    A client's ephemeral port differs on every retry; the host is what identifies it.
    """
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        return endpoint
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return endpoint if ":" in host else host
