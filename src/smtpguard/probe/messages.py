"""The bytes the probe sends as message content, and the smuggling variants.

Test messages are plain 7-bit text with CRLF line endings and no line starting with a
dot, so no dot-stuffing is needed. The body deliberately does NOT end in CRLF: each
check appends its own end-of-data sequence (whole, split, or bogus).

A smuggling attempt is one DATA stream, as the public scanners send it (hannob's
``smtpsmug``, The-Login's ``SMTP-Smuggling-Tools``): the carrier message's body, a
bogus end-of-data sequence, then a complete second transaction (MAIL, RCPT, DATA and a
message of its own) and finally the real ``CRLF . CRLF``. A receiver that keeps the
bogus sequence as content stores one message that contains the second transaction as
text; a receiver that takes it as end of data stores two. Each message carries a
Message-ID unique to the run and the variant, so a mailbox tells the two apart.
"""

from __future__ import annotations

import email.utils
import uuid

from smtpguard.core.grammar import CRLF

# Bogus end-of-data sequences (SMTP smuggling, SEC Consult 2023; CVE-2023-51764/5/6),
# sent right after the last body character. Together they are every sequence that
# smtpsmug (``--list-tests``) and SMTP-Smuggling-Tools (inbound and outbound lists)
# try; the comment names the smtpsmug test where there is one.
SMUGGLING_VARIANTS: dict[str, bytes] = {
    "LF.LF": b"\n.\n",  # lflf
    "LF.CRLF": b"\n.\r\n",  # lfcrlf
    "CRLF.LF": b"\r\n.\n",  # crlflf
    "CR.CR": b"\r.\r",  # crcr
    "CR.LF": b"\r.\n",  # crlf
    "LF.CR": b"\n.\r",  # lfcr
    "CRLF.CR": b"\r\n.\r",  # crlfcr
    "CR.CRLF": b"\r.\r\n",  # crcrlf
    "CRLF.CRCRLF": b"\r\n.\r\r\n",
    "CRCRLF.CRCRLF": b"\r\r\n.\r\r\n",
    "CRLF.NUL-before": b"\r\n\x00.\r\n",  # nullbefore
    "CRLF.NUL-after": b"\r\n.\x00\r\n",  # nullafter
}

SPLIT_SEGMENTS = (b"\r\n", b".", b"\r\n")

_ESCAPES = {0x0D: "\\r", 0x0A: "\\n", 0x00: "\\0"}


def escaped(data: bytes) -> str:
    """``b"\\r\\n.\\n"`` -> ``"\\r\\n.\\n"``: the bytes as a reader would type them."""
    return "".join(_ESCAPES.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}") for b in data)


def new_message_id(helo_name: str, tag: str = "") -> str:
    """A Message-ID (without ``<>``) no other message has; ``tag`` says what it is."""
    return f"{uuid.uuid4().hex}{'.' + tag if tag else ''}@{helo_name}"


def probe_message(
    purpose: str, mail_from: str, rcpt_to: str, helo_name: str, message_id: str | None = None
) -> bytes:
    """Header and body of a probe message, without the final CRLF."""
    sender = mail_from or f"probe@{helo_name}"
    lines = [
        f"From: smtpguard probe <{sender}>",
        f"To: <{rcpt_to}>",
        f"Subject: smtpguard probe: {purpose}",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: <{message_id or new_message_id(helo_name)}>",
        "Auto-Submitted: auto-generated",
        "",
        "This message was sent by `smtpguard probe`, a diagnostic tool that checks",
        f"how the mail path handles the end of a message ({purpose}).",
        "It can be deleted.",
    ]
    return "\r\n".join(lines).encode("ascii", "replace")


# The last body line of a carrier ends with this text, right before the bogus
# sequence; in a delivered carrier the bytes between it and the smuggled MAIL command
# show what the path made of the sequence.
CARRIER_TAIL = b"bogus end of data follows:"
SMUGGLED_MAIL = b"MAIL FROM:"


def carrier_message(
    name: str, mail_from: str, rcpt_to: str, helo_name: str, message_id: str
) -> bytes:
    """The first message of a smuggling attempt, up to (without) the bogus sequence."""
    body = probe_message(f"smuggling variant {name}", mail_from, rcpt_to, helo_name, message_id)
    return body + CRLF + CARRIER_TAIL


def smuggled_transaction(
    name: str, mail_from: str, rcpt_to: str, helo_name: str, message_id: str
) -> bytes:
    """MAIL, RCPT, DATA and the smuggled message, up to (without) its final CRLF.CRLF.

    The envelope is the probe's own (``--from``/``--to``): nothing is forged, but a
    message with this Message-ID in the mailbox proves the path executed the second
    transaction."""
    message = probe_message(
        f"SMUGGLED message after {name}", mail_from, rcpt_to, helo_name, message_id
    )
    commands = f"MAIL FROM:<{mail_from}>\r\nRCPT TO:<{rcpt_to}>\r\nDATA\r\n"
    return commands.encode("utf-8", "surrogateescape") + message
