"""Which greeting the probe sends, EHLO or HELO, and why: pure rules, no I/O.

A sending MTA decides between EHLO and HELO from what the path shows it. The probe
decides as Postfix's SMTP client does (smtp_proto.c ``smtp_helo()``, Postfix 2.4 and
later, default settings), and adds two fallbacks Postfix lacks, so that it can talk
to a PIX 6.x Mailguard, the device the gateway's ``--emulate pix`` copies:

1. **Masked banner** (Postfix): a greeting made only of ``2``, ``0``, space and
   ``*`` switches on ``smtp_pix_workarounds``, whose default includes
   ``disable_esmtp``: Postfix sends HELO and never EHLO.
2. **EHLO refused** (Postfix): any reply to EHLO that is not 2xx makes Postfix send
   HELO (a 421 ends its session; the probe tries HELO all the same).
3. **A 250 that is not an EHLO reply** (ours): RFC 5321 §4.1.1.1 ``ehlo-ok-rsp``
   begins with the server's domain. A one-line 250 whose first word is not a
   fully-qualified domain or an address literal (``250 OK``, ``250 2.0.0 Ok``)
   names no server: it is the reply to another command. A PIX 6.x overwrites EHLO
   with NOOP, so the server answers a NOOP and the client sees ``250 OK``; Postfix
   takes it as an EHLO success and finds out at MAIL.
4. **MAIL asks for HELO** (ours): after an EHLO judged a success, a ``503`` to the
   first MAIL (RFC 5321 §4.3.2: bad sequence, i.e. no HELO/EHLO seen), or a 4xx/5xx
   whose text asks for HELO/EHLO/"hello", means the server never saw the EHLO. The
   probe opens a new session with HELO and goes on.

Masked keywords: ASA ``inspect esmtp`` overwrites each EHLO keyword its policy does
not allow (``match ehlo-reply-parameter others mask``; STARTTLS always, unless
``allow-tls``) with X's, keeping its length, the last character a letter counting
the masked keywords (``A``, ``B``, …). Seen in the wild: ``250-XXXXXXXA`` where
STARTTLS was (STARTTLS then got 500), then ``250 XXXB``. A masked keyword of STARTTLS's
length with no STARTTLS offered is read as a stripped STARTTLS. The smtpguard
gateway itself removes keywords (esmtp mode) instead of masking them, and its PIX
emulation never lets EHLO through, so neither shows masked keywords.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smtpguard.core.banner import looks_like_pix_mask
from smtpguard.core.grammar import Reply

# RFC 5321 §4.1.2 Domain with at least two labels (§2.3.5: only fully-qualified
# names are permitted), or an address literal. A top-level label is never all digits
# (RFC 3696 §2), which also keeps out an enhanced status code such as "2.0.0".
_FQDN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)
_ADDRESS_LITERAL = re.compile(r"\[[^\[\]\s]+\]")
# Words of a reply that asks the client to greet first: Postfix "send HELO/EHLO first",
# aiosmtpd "send HELO first", Sendmail "Polite people say HELO first", Exchange "Send
# hello first".
_ASKS_HELLO = re.compile(r"\b(?:HELO|EHLO|hello)\b", re.IGNORECASE)
# ASA mask of one keyword: X's, the last character a letter (A for the first masked
# keyword, B for the second, ...), or X's only.
MASKED_KEYWORD = re.compile(r"X{2,}[A-Z]|X{3,}")
STARTTLS = "STARTTLS"
# Keywords of each length a mask may stand for (the common ones, most likely first).
_KNOWN_KEYWORDS = (
    "STARTTLS",
    "AUTH",
    "SIZE",
    "PIPELINING",
    "8BITMIME",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "SMTPUTF8",
    "CHUNKING",
    "BINARYMIME",
    "ETRN",
    "VRFY",
    "HELP",
    "DELIVERBY",
    "XCLIENT",
    "XFORWARD",
    "XEXCH50",
)


class Cause(enum.Enum):
    """Why the probe greets as it does."""

    EHLO = "ehlo"  # EHLO answered with an EHLO reply
    MASKED_BANNER = "masked-banner"  # Postfix smtp_pix_workarounds = disable_esmtp
    EHLO_REFUSED = "ehlo-refused"  # not 2xx: Postfix falls back to HELO
    NOT_EHLO_REPLY = "not-ehlo-reply"  # a 250 that names no server (PIX 6.x NOOP)
    MAIL_ASKS_HELO = "mail-asks-helo"  # 503 to MAIL after an EHLO "success"


@dataclass(frozen=True, slots=True)
class HelloChoice:
    verb: str  # "EHLO" or "HELO"
    cause: Cause
    detail: str  # one line: which greeting, and why

    def to_json(self) -> dict[str, Any]:
        return {"verb": self.verb, "cause": self.cause.value, "detail": self.detail}


def _summary(reply: Reply) -> str:
    return reply.log_lines()[0] if reply.lines else str(reply.code)


def postfix_sends_ehlo(banner: Reply) -> bool:
    """Would Postfix (defaults: smtp_always_send_ehlo = yes, smtp_pix_workarounds =
    disable_esmtp, delay_dotcrlf) send EHLO after this greeting?"""
    return not looks_like_pix_mask(banner.raw)


def postfix_keeps_ehlo(ehlo: Reply) -> bool:
    """Does Postfix go on in ESMTP after this reply to EHLO? (any 2xx)"""
    return ehlo.code // 100 == 2


def is_ehlo_reply(reply: Reply) -> bool:
    """Is this a 250 reply to EHLO as RFC 5321 §4.1.1.1 shapes it?

    True when the code is 250 and the reply has extension lines, or its first word
    is a fully-qualified domain (two labels or more, the last not all digits) or an
    address literal. A one-line ``250 OK`` or ``250 2.0.0 Ok`` names no server: false."""
    if reply.code != 250 or not reply.lines:
        return False
    if len(reply.lines) > 1:
        return True
    words = reply.lines[0].split(None, 1)
    if not words:
        return False
    first = words[0]
    if _ADDRESS_LITERAL.fullmatch(first):
        return True
    tld = first.rstrip(".").rsplit(".", 1)[-1]
    return bool(_FQDN.fullmatch(first)) and not tld.isdigit()


def asks_for_hello(reply: Reply) -> bool:
    """Does this reply to MAIL say the server saw no HELO/EHLO? A 503 (bad sequence
    of commands, RFC 5321 §4.3.2), or a 4xx/5xx naming HELO, EHLO or hello; never a
    reply that asks for AUTH."""
    if reply.code // 100 not in (4, 5):
        return False
    text = " ".join(reply.lines)
    if re.search(r"\bauth", text, re.IGNORECASE) and not _ASKS_HELLO.search(text):
        return False
    return reply.code == 503 or bool(_ASKS_HELLO.search(text))


def choose(banner: Reply, ehlo: Reply | None, need_esmtp: bool = False) -> HelloChoice:
    """The greeting for the rest of the session, after the banner and (if it was
    sent) the reply to EHLO. ``need_esmtp``: STARTTLS or AUTH was asked for, so a
    masked banner alone does not give up EHLO (both need it)."""
    masked = not postfix_sends_ehlo(banner)
    if ehlo is not None and not postfix_keeps_ehlo(ehlo):
        return HelloChoice(
            "HELO",
            Cause.EHLO_REFUSED,
            f"EHLO refused ({_summary(ehlo)}); used HELO, as senders do",
        )
    if ehlo is not None and not is_ehlo_reply(ehlo):
        return HelloChoice(
            "HELO",
            Cause.NOT_EHLO_REPLY,
            f"EHLO answered like a NOOP ({_summary(ehlo)}, no server name): a PIX 6.x "
            "rewrites EHLO to NOOP; used HELO",
        )
    if masked and not need_esmtp:
        return HelloChoice(
            "HELO",
            Cause.MASKED_BANNER,
            "greeting masked PIX-style: Postfix senders send HELO, never EHLO "
            "(smtp_pix_workarounds = disable_esmtp); used HELO",
        )
    return HelloChoice("EHLO", Cause.EHLO, "EHLO answered with an EHLO reply; used EHLO")


def after_mail(choice: HelloChoice, mail: Reply) -> HelloChoice | None:
    """The new choice when MAIL, after an EHLO judged a success, asks for HELO;
    else ``None`` (go on as before)."""
    if choice.verb != "EHLO" or not asks_for_hello(mail):
        return None
    return HelloChoice(
        "HELO",
        Cause.MAIL_ASKS_HELO,
        f"EHLO got 250 but MAIL was answered {_summary(mail)}: the server never saw "
        "the EHLO (a filter rewrote it); used HELO in a new session",
    )


@dataclass(frozen=True, slots=True)
class MaskedKeyword:
    token: str  # as the path showed it, e.g. "XXXXXXXA"
    candidates: tuple[str, ...]  # keywords of that length not otherwise offered


def masked_keywords(keywords: Sequence[str]) -> list[MaskedKeyword]:
    """The masked keywords of an EHLO reply, each with the known keywords of the same
    length that the reply does not offer in clear."""
    clear = {k for k in keywords if not MASKED_KEYWORD.fullmatch(k)}
    out: list[MaskedKeyword] = []
    for k in keywords:
        if MASKED_KEYWORD.fullmatch(k):
            same = tuple(w for w in _KNOWN_KEYWORDS if len(w) == len(k) and w not in clear)
            out.append(MaskedKeyword(k, same))
    return out


def stripped_starttls(keywords: Sequence[str]) -> str | None:
    """The masked token that stands where STARTTLS was (``XXXXXXXA``), or ``None``:
    STARTTLS offered in clear, or no masked keyword of its length."""
    for masked in masked_keywords(keywords):
        if STARTTLS in masked.candidates:
            return masked.token
    return None
