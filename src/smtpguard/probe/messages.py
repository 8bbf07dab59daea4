"""The bytes the probe sends as message content, and the smuggling variants.

Test messages are plain 7-bit text with CRLF line endings and no line starting with a
dot, so no dot-stuffing is needed. The body deliberately does NOT end in CRLF: each
check appends its own end-of-data sequence (whole, split, or bogus).
"""

from __future__ import annotations

import email.utils
import uuid

# Bogus end-of-data sequences (SMTP smuggling, SEC Consult 2023; CVE-2023-51764/5/6).
# Each is sent after the last body line; a strict receiver treats it as content.
SMUGGLING_VARIANTS: dict[str, bytes] = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r",
    "CR.CRLF": b"\r.\r\n",
}

SPLIT_SEGMENTS = (b"\r\n", b".", b"\r\n")


def probe_message(purpose: str, mail_from: str, rcpt_to: str, helo_name: str) -> bytes:
    """Header and body of a probe message, without the final CRLF."""
    sender = mail_from or f"probe@{helo_name}"
    lines = [
        f"From: smtpguard probe <{sender}>",
        f"To: <{rcpt_to}>",
        f"Subject: smtpguard probe: {purpose}",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: <{uuid.uuid4().hex}@{helo_name}>",
        "Auto-Submitted: auto-generated",
        "",
        "This message was sent by `smtpguard probe`, a diagnostic tool that checks",
        f"how the mail path handles the end of a message ({purpose}).",
        "It can be deleted.",
    ]
    return "\r\n".join(lines).encode("ascii", "replace")
