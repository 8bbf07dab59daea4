"""Greeting (220 banner) policies, docs/design.md#banner.

``generic`` is the default because a banner made only of ``2``, ``0``, space and
``*`` makes Postfix senders switch on their PIX work-arounds (slower delivery,
``smtp_pix_workarounds``), and a mask still says "there is a PIX here".
"""

from __future__ import annotations

import functools
import re
from typing import Final

from smtpguard.core.grammar import Reply, make_reply
from smtpguard.core.policy import BannerPolicy, PixRewrite, Policy

_PIX_KEEP: Final = re.compile(rb"[^20\r\n]")


def pix_mask(raw: bytes) -> bytes:
    """Mask a reply the way PIX Mailguard did: in each line's text every character
    except ``2`` and ``0`` becomes ``*``; code, separator and length are kept, so a
    multi-line greeting still parses."""
    out = bytearray()
    for line in raw.splitlines(keepends=True):
        out += line[:4] + _PIX_KEEP.sub(b"*", line[4:])
    return bytes(out)


def greeting(reply: Reply, policy: Policy) -> bytes:
    """The bytes the client sees for the server's greeting ``reply``.

    The banner policy applies to every greeting, a refusal (554, 421) too: its code is
    the server's decision and is kept (with its enhanced status code), but its text
    would name the server's software like a 220 does.
    """
    if policy.emulation.pix and reply.code == 220:  # the lab emulation masks, always
        return pix_mask(reply.raw)
    if policy.banner is BannerPolicy.PASS:
        return reply.raw
    if policy.banner is BannerPolicy.PIX:
        return pix_mask(reply.raw)
    if reply.code != 220:
        enhanced = reply.enhanced()
        status = "{}.{}.{} ".format(*enhanced) if enhanced else ""
        return make_reply(reply.code, f"{status}{policy.hostname} Service not available").raw
    if policy.banner is BannerPolicy.CUSTOM:
        return _banner(policy.banner_text)
    return _banner(f"{policy.hostname} ESMTP")


@functools.lru_cache(maxsize=64)
def _banner(text: str) -> bytes:
    return make_reply(220, text).raw


def pix_rewrite(line: bytes, style: PixRewrite) -> bytes:
    """A disallowed command as PIX Mailguard passed it on: the verb overwritten with
    ``NOOP`` (6.x) or with as many ``X`` as it has letters (7.x), the rest kept."""
    verb_len = len(line.split(b" ", 1)[0].rstrip(b"\r\n"))
    new = b"NOOP" if style is PixRewrite.NOOP else b"X" * verb_len
    return new + line[verb_len:]


# Postfix smtp(8), smtp_proto.c smtp_helo(): after a 2xx greeting,
#   if (resp->str[strspn(resp->str, "20 *\t\n")] == 0) -> PIX workarounds
# where resp->str is the whole reply as received (smtp_chat.c smtp_chat_resp()): every
# line with its code and separator, CR/LF stripped, joined by "\n", after printable()
# replaced each non-printable byte (a tab too) with "?". So only these bytes can pass.
_PIX_MASK_BYTES: Final = b"20 *"


def looks_like_pix_mask(greeting: bytes) -> bool:
    """True if a Postfix client would take this greeting for a Cisco PIX mask.

    ``greeting`` is the reply as received, every line with its code (``220-…`` /
    ``220 …``), CRLF or LF line ends. This is Postfix's own test, exactly: the
    greeting consists only of ``2``, ``0``, space and ``*``. A bare ``220`` passes
    (Postfix switches on its workarounds for it); a multi-line greeting never does,
    its ``-`` separator is not in the set; a tab fails, Postfix turns it into ``?``.
    An empty greeting is not a greeting."""
    text = False
    for line in greeting.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.strip(_PIX_MASK_BYTES):
            return False
        text = text or bool(line)
    return text
