"""Envelope checks on MAIL and RCPT (docs/design.md#limits), and what a finding looks like.

Each check compares one value with a threshold or a pattern list from
:class:`~smtpguard.core.policy.Checks` and returns a :class:`Finding`: a stable event
ID, a one-line message, the configured verdict and the reply a ``reject`` sends.
The session applies the verdict; message-data checks live in ``message.py``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from smtpguard.core.address import EnvelopePath, parse_path
from smtpguard.core.grammar import ascii_number, ascii_upper, make_reply
from smtpguard.core.policy import Check, Checks, MimeStructureCheck, PatternCheck, Verdict

_CONTROL = re.compile(r"[\x00-\x1f\x7f|]")


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # name of the check (rate limits count per check)
    event_id: str
    message: str
    verdict: Verdict
    reply: bytes  # what a reject sends
    rate: int = 0
    period: float = 60.0


def octets(text: str) -> int:
    """Length of ``text`` in octets as it was on the wire (every length limit is in
    octets: RFC 5321 §4.5.3.1). Arguments are decoded with ``surrogateescape``, so
    this is their exact original size."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def over(check: Check, value: int) -> bool:
    return check.limit is not None and value > check.limit


def finding(
    name: str,
    event_id: str,
    message: str,
    check: Check | PatternCheck | MimeStructureCheck,
    code: int,
    text: str,
) -> Finding:
    """The finding of ``check``: its action and rate, and the reply a reject sends."""
    return Finding(
        name, event_id, message, check.action, make_reply(code, text).raw, check.rate, check.period
    )


@functools.lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def pattern_fires(check: PatternCheck, value: str) -> bool:
    """True when ``value`` breaks the rule: matches a pattern (deny list) or, for an
    allow list, matches none.

    Search semantics (``re.search``), as grep, Postfix's regexp tables and every
    shipped example read a pattern: ``\\.exe$`` matches any name that ends in ".exe",
    and a pattern matches the whole value only when it says so with ``^…$``. (0.1.0
    used ``fullmatch``: an unanchored deny pattern never fired; CHANGELOG.)"""
    if not check.patterns:
        return False
    hit = any(p.search(value) for p in _compiled(check.patterns))
    return hit != check.allow


def special_characters(args: str) -> str | None:
    """Why the address argument is unsafe, or None. A pipe or control character in
    an address is the classic shell-injection vector against old MTAs; unbalanced
    angle brackets confuse parsers downstream."""
    if args.count("<") != args.count(">"):
        return "unbalanced <>"
    m = _CONTROL.search(args)
    if m:
        return "pipe character" if m.group() == "|" else "control character"
    return None


def check_mail(args: str, checks: Checks) -> tuple[Finding | None, str, str]:
    """Checks on ``MAIL FROM:<addr> params``; returns (finding, address, params)."""
    bad = special_characters(args)
    if bad is not None:
        return (
            Finding(
                "special_characters",
                "SG-CHK-SPECIAL-CHARS",
                f"{bad} in MAIL FROM",
                checks.special_characters,
                make_reply(553, f"5.1.7 Sender address rejected: {bad}").raw,
            ),
            "",
            "",
        )
    path = parse_path(args, "FROM")
    if path is None:  # never forwarded unread: the server may take what we cannot read
        return path_syntax("MAIL FROM", "5.1.7 Bad sender address syntax"), "", ""
    addr = path.mailbox  # as the server reads it: route dropped, quotes removed
    params = path.params
    size = octets(addr)
    if over(checks.sender_length, size):
        return (
            finding(
                "sender_length",
                "SG-CHK-SENDER-LENGTH",
                f"sender address of {size} octets (limit {checks.sender_length.limit})",
                checks.sender_length,
                553,
                "5.1.7 Sender address too long",
            ),
            addr,
            params,
        )
    if pattern_fires(checks.sender_pattern, addr):
        return (
            finding(
                "sender_pattern",
                "SG-CHK-SENDER-PATTERN",
                f"sender <{addr}> matches the sender patterns",
                checks.sender_pattern,
                550,
                "5.7.1 Sender address rejected",
            ),
            addr,
            params,
        )
    declared = size_param(params)
    if declared is not None and over(checks.message_size, declared):
        return (
            finding(
                "message_size",
                "SG-CHK-MESSAGE-SIZE",
                f"declared SIZE={declared} over {checks.message_size.limit}",
                checks.message_size,
                552,
                "5.3.4 Message size exceeds fixed maximum message size",
            ),
            addr,
            params,
        )
    return None, addr, params


def check_rcpt(args: str, checks: Checks, count: int) -> tuple[Finding | None, str]:
    """Checks on ``RCPT TO:<addr> params``; ``count`` includes this recipient.
    Returns (finding, params)."""
    if over(checks.rcpt_count, count):
        return finding(
            "rcpt_count",
            "SG-CHK-RCPT-COUNT",
            f"{count} recipients in one transaction (limit {checks.rcpt_count.limit})",
            checks.rcpt_count,
            452,
            "4.5.3 Too many recipients",
        ), ""
    bad = special_characters(args)
    if bad is not None:
        return Finding(
            "special_characters",
            "SG-CHK-SPECIAL-CHARS",
            f"{bad} in RCPT TO",
            checks.special_characters,
            make_reply(553, f"5.1.3 Recipient address rejected: {bad}").raw,
        ), ""
    path = parse_path(args, "TO")
    # Never forwarded unread: the server may take what we cannot read. An empty
    # forward-path is no recipient at all (RFC 5321 §4.1.1.3).
    if path is None or not path.mailbox:
        return path_syntax("RCPT TO", "5.1.3 Bad recipient address syntax"), ""
    params = path.params
    why = relay_refused(checks.recipient_domains, path)
    if why is not None:
        return finding(
            "recipient_domains",
            "SG-CHK-RECIPIENT-DOMAIN",
            why,
            checks.recipient_domains,
            550,
            "5.7.1 Relay access denied",
        ), params
    return None, params


def path_syntax(where: str, text: str) -> Finding:
    """A MAIL/RCPT argument the gateway cannot read as the server would: refused,
    whatever the policy (core/address.py)."""
    return Finding(
        "path_syntax",
        "SG-CHK-PATH-SYNTAX",
        f"{where} address the gateway cannot read unambiguously",
        Verdict.REJECT,
        make_reply(501, text).raw,
    )


def relay_refused(check: PatternCheck, path: EnvelopePath) -> str | None:
    """Why ``recipient_domains`` refuses this recipient, or None. Every domain the
    server may route on is checked: the one after the last "@" and, for a U-label
    domain, its IDNA A-label (Postfix routes on that); a local part with routing
    characters ("@", "%", "!") may be re-routed by the server on a domain inside it,
    which no pattern on the domain sees, so it is refused while the check is on. A
    recipient without a domain goes where the server's $myorigin says, which no
    pattern sees either: only ``<Postmaster>`` passes (RFC 5321 §4.1.1.3 requires it
    to be accepted without a domain)."""
    if not check.patterns:
        return None
    domain = path.domain
    if path.routed:
        return f"sender-specified routing in <{path.mailbox}> is not allowed"
    if not domain:
        if path.mailbox.isascii() and path.mailbox.lower() == "postmaster":
            return None
        return f"recipient <{path.mailbox}> without a domain is not allowed"
    if pattern_fires(check, domain):
        return f"relaying to {domain} is not allowed"
    if not domain.isascii():
        try:
            alabel = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return f"relaying to {domain} is not allowed (no IDNA form)"
        if pattern_fires(check, alabel):
            return f"relaying to {domain} ({alabel}) is not allowed"
    return None


def size_param(params: str) -> int | None:
    """The value of a MAIL ``SIZE=`` parameter (RFC 1870), or None."""
    for p in params.split():
        name, _, value = p.partition("=")
        if ascii_upper(name) == "SIZE":
            size = ascii_number(value)
            if size >= 0:
                return size
    return None


class Rates:
    """``rate-limit`` bookkeeping for one session: events per check per period. Keyed
    by check name, so bounded by the policy, not by the client."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        # Made at the first finding: most sessions have none.
        self._seen: dict[str, tuple[float, int]] | None = None

    def allow(self, f: Finding, now: float) -> bool:
        seen = self._seen
        if seen is None:
            seen = self._seen = {}
        start, count = seen.get(f.check, (now, 0))
        if now - start >= f.period:
            start, count = now, 0
        seen[f.check] = (start, count + 1)
        return count < f.rate
