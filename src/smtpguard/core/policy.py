"""Policy: plain, immutable data the inspector consults.

The gateway builds a :class:`Policy` from flags or a config file; the core never
reads files or the environment. Defaults are Mailguard (PIX ``fixup protocol smtp``)
behaviour with RFC 5321 limits and timeouts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from smtpguard.core.grammar import COMMAND_LINE_LIMIT


class Mode(enum.Enum):
    MAILGUARD = "mailguard"
    ESMTP = "esmtp"


class BannerPolicy(enum.Enum):
    PASS = "pass"  # the server's greeting unchanged
    GENERIC = "generic"  # "220 <hostname> ESMTP": hides software, not PIX-like
    PIX = "pix"  # PIX mask: every text character but '2' and '0' becomes '*'
    CUSTOM = "custom"  # "220 <banner_text>"


class Smuggling(enum.Enum):
    REJECT = "reject"


class Verdict(enum.Enum):
    """What to do when a check fires."""

    REJECT = "reject"  # 5xx reply, session continues
    DROP = "drop-connection"  # 421 reply, then close
    RESET = "reset"  # TCP RST
    LOG = "log"  # let it pass, log the event


# RFC 821 §4.5.1: the seven commands Mailguard lets through.
MAILGUARD_VERBS = frozenset({"HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"})
ESMTP_VERBS = frozenset(
    {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "AUTH", "VRFY", "HELP", "ETRN"}
)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. RFC 5321 §4.5.3.2 minimums; the gateway is a server to the client
    and a client to the upstream, so both sets apply."""

    client_idle: float = 300.0  # §4.5.3.2.7 server timeout
    connect: float = 30.0  # TCP connect to the upstream (ours; not in the RFC)
    greeting: float = 300.0  # §4.5.3.2.1 initial 220
    command: float = 300.0  # §4.5.3.2.2/3 MAIL, RCPT (and other commands)
    data_init: float = 120.0  # §4.5.3.2.4 DATA initiation
    data_end: float = 600.0  # §4.5.3.2.6 DATA termination


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode = Mode.MAILGUARD
    allowed_verbs: frozenset[str] = MAILGUARD_VERBS
    banner: BannerPolicy = BannerPolicy.GENERIC
    banner_text: str = ""
    hostname: str = "smtpguard.invalid"
    smuggling: Smuggling = Smuggling.REJECT
    command_line_limit: int = COMMAND_LINE_LIMIT
    command_line_action: Verdict = Verdict.DROP
    # Pipelined commands awaiting replies before we stop reading (RFC 2920 §3.1 lets
    # a client send a whole group; 100 covers the RCPT default limit).
    max_pending: int = 128
    # BDAT chunks larger than this close the connection instead of being drained.
    bdat_drain_limit: int = 64 * 1024 * 1024
    timeouts: Timeouts = field(default_factory=Timeouts)

    @classmethod
    def for_mode(cls, mode: Mode, **kw: object) -> Policy:
        verbs = MAILGUARD_VERBS if mode is Mode.MAILGUARD else ESMTP_VERBS
        return cls(mode=mode, allowed_verbs=verbs, **kw)  # type: ignore[arg-type]
