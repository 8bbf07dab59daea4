"""Small, named detection rules shared by the session tracker and the parsers."""

from __future__ import annotations

import re
from collections.abc import Sequence

from smtpguard.core.banner import looks_like_pix_mask
from smtpguard.core.grammar import ascii_number

# A greeting in which only part was masked (ASA mask-banner, a filter that masks the
# host or software name) still shows the mask as a long run of asterisks.
_ASTERISK_RUN = re.compile(r"\*{5,}")
# EHLO answered "command unrecognized / not implemented" (RFC 5321 §4.2.4): the
# Mailguard and "inspect esmtp" behaviour that forces a client back to HELO.
EHLO_REJECT_CODES = frozenset({500, 502})
# Message-ID as a server echoes it in its final reply (Exchange "250 2.6.0 <id>").
_ANGLE_ID = re.compile(r"<([^<>\s]+@[^<>\s]+)>")


def pix_greeting(reply_lines: Sequence[str]) -> bool:
    """The core's one PIX-mask rule on a greeting as a log shows it (full lines, code
    and separator included): would a Postfix sender switch on its PIX workarounds?"""
    return looks_like_pix_mask("\n".join(reply_lines).encode("utf-8", "surrogateescape"))


def is_masked_banner(reply_lines: Sequence[str]) -> bool:
    """A 220 greeting that looks PIX-masked, wholly (:func:`pix_greeting`) or in part."""
    if pix_greeting(reply_lines):
        return True
    return any(_ASTERISK_RUN.search(line) for line in reply_lines)


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
    if not sep or ascii_number(port) < 0:
        return endpoint
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return endpoint if ":" in host else host
