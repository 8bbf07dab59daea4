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
    REJECT = "reject"  # bare CR / bare LF / NUL: the message or command is refused
    # Rewrite line endings to CRLF and re-stuff dots AFTER the end of data is fixed on
    # the raw stream (never before: that was the Cisco "Clean" hole). Opt-in, per
    # client network, for legacy senders.
    NORMALIZE = "normalize"


class Verdict(enum.Enum):
    """What to do when a check fires."""

    REJECT = "reject"  # 5xx reply, session continues
    DROP = "drop-connection"  # 421 reply, then close
    RESET = "reset"  # TCP RST
    LOG = "log"  # let it pass, log the event
    RATE_LIMIT = "rate-limit"  # let ``rate`` events per ``period`` pass, reject beyond


class ScreenAction(enum.Enum):
    """What a protocol screen does with a client it catches (core/screen.py)."""

    REJECT = "reject"  # the offending commands are refused; the session goes on
    DROP = "drop-connection"  # a 4xx/5xx reply, then close
    LOG = "log"  # let it pass, log the event


class StartTls(enum.Enum):
    STRIP = "strip"  # STARTTLS is neither offered nor accepted (ASA default)
    PASSTHROUGH = "passthrough"  # relayed; inspection stops once TLS starts
    TERMINATE = "terminate"  # the gateway speaks TLS to both sides, inspects in clear


class DedupeReply(enum.Enum):
    """What a suppressed copy is answered ([dedupe] answer, docs/scale-out.md)."""

    QUEUE_ID = "queue-id"  # 250 2.0.0 Already accepted as <the server's queue ID>
    OK = "ok"  # 250 2.0.0 Ok: names no queue ID and says nothing of a first copy


class Balance(enum.Enum):
    """``[gateway] upstream_policy``: how the driver picks an upstream server for a
    session's connection (gateway/upstreams.py)."""

    FAILOVER = "failover"  # the first healthy one, in the configured order
    ROUND_ROBIN = "round-robin"  # the next healthy one, in turn


class PixRewrite(enum.Enum):
    """How the PIX emulation masks a disallowed command (lab tool, issue #5)."""

    NOOP = "noop"  # PIX 6.x: the verb is overwritten with NOOP
    XXXX = "xxxx"  # PIX 7.x / ASA: the verb is overwritten with XXXX


# RFC 821 §4.5.1: the seven commands Mailguard lets through.
MAILGUARD_VERBS = frozenset({"HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"})
ESMTP_VERBS = frozenset(
    {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "AUTH", "VRFY", "HELP", "ETRN"}
)
# EHLO keywords a client may see in esmtp mode by default (ASA keeps a similar set).
DEFAULT_EHLO_KEYWORDS = frozenset(
    {"SIZE", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "DSN", "SMTPUTF8", "AUTH"}
)
# Always stripped, whatever the allow-list says: extensions the gateway cannot
# inspect (CHUNKING, BINARYMIME) or that would let a client speak for the gateway.
ALWAYS_STRIPPED_KEYWORDS = frozenset({"CHUNKING", "BINARYMIME", "XCLIENT", "XFORWARD", "XEXCH50"})


@dataclass(frozen=True, slots=True)
class Check:
    """One inspection rule: fires above ``limit`` (None: the check is off)."""

    action: Verdict
    limit: int | None = None
    rate: int = 0  # RATE_LIMIT: events that pass per period
    period: float = 60.0

    @property
    def enabled(self) -> bool:
        return self.limit is not None


@dataclass(frozen=True, slots=True)
class PatternCheck:
    """Fires when a value matches one of ``patterns`` (Python regexes, case-blind);
    no patterns: off. ``allow`` inverts it: fires when no pattern matches."""

    action: Verdict = Verdict.REJECT
    patterns: tuple[str, ...] = ()
    allow: bool = False
    rate: int = 0  # RATE_LIMIT: events that pass per period
    period: float = 60.0

    @property
    def enabled(self) -> bool:
        return bool(self.patterns)


@dataclass(frozen=True, slots=True)
class MimeStructureCheck:
    """The MIME reader's bounds (core/mime.py), a :class:`Check` with more of them.
    ``limit`` is the nesting depth (None: the check is off, and a structure past a
    bound fires the MIME checks that are on instead, with their own actions). The
    other bounds always hold: they bound memory and work per message (the ``email``
    decoder is slow on long, odd fields)."""

    action: Verdict = Verdict.REJECT
    limit: int | None = 20  # the message is level 0
    rate: int = 0  # RATE_LIMIT: events that pass per period
    period: float = 60.0
    header_block: int = 8 * 1024  # octets of one part's Content-* fields
    header_total: int = 1024 * 1024  # octets of Content-* fields in one message
    parts: int = 10_000  # MIME parts (nodes of a client's walk()) in one message

    @property
    def enabled(self) -> bool:
        return self.limit is not None


@dataclass(frozen=True, slots=True)
class Checks:
    """Per-check thresholds and actions. Defaults are ASA's ``_default_esmtp_map``
    where it has the check, else off."""

    command_line_length: Check = Check(Verdict.DROP, COMMAND_LINE_LIMIT)  # RFC 5321 §4.5.3.1.4
    rcpt_count: Check = Check(Verdict.DROP, 100)  # RFC 5321 §4.5.3.1.8 minimum is 100
    header_line_length: Check = Check(Verdict.DROP, 998)  # RFC 5322 §2.1.1
    header_size: Check = Check(Verdict.REJECT, None)  # total octets before the empty line
    to_cc_count: Check = Check(Verdict.REJECT, None)  # addresses in To: and Cc:
    body_line_length: Check = Check(Verdict.LOG, 998)  # RFC 5322 §2.1.1
    sender_length: Check = Check(Verdict.DROP, 320)  # RFC 5321 §4.5.3.1.3 (64 + 1 + 255)
    invalid_recipients: Check = Check(Verdict.DROP, None)  # server 5xx to RCPT, per session
    message_size: Check = Check(Verdict.REJECT, None)  # declared SIZE= and actual octets
    mime_filename_length: Check = Check(Verdict.DROP, 255)
    received_count: Check = Check(Verdict.REJECT, 100)  # RFC 5321 §6.3: a mail loop
    mime_structure: MimeStructureCheck = MimeStructureCheck()
    special_characters: Verdict = Verdict.REJECT  # |, unbalanced <>, controls in addresses
    sender_pattern: PatternCheck = PatternCheck()
    recipient_domains: PatternCheck = PatternCheck(allow=True)  # mail-relay restriction
    mime_filename_pattern: PatternCheck = PatternCheck()
    mime_type_pattern: PatternCheck = PatternCheck()
    transfer_encoding_pattern: PatternCheck = PatternCheck()


@dataclass(frozen=True, slots=True)
class Screens:
    """Protocol screens of bots (core/screen.py, docs/screening.md): what a real MTA
    never does and a bot often does. Each is off or on by itself."""

    # A first line of another protocol (HTTP, POP3/FTP USER, a TLS ClientHello).
    non_smtp: bool = True
    non_smtp_action: ScreenAction = ScreenAction.DROP
    # A command sent before the reply to the previous one, PIPELINING not offered.
    pipelining: bool = False
    pipelining_action: ScreenAction = ScreenAction.REJECT
    # Error replies (4xx/5xx, the gateway's and the server's) before the session is
    # closed; 0: no limit.
    error_limit: int = 0
    # Tarpit: each error reply after the third held error_delay seconds more than the
    # one before (error_delay, 2 x error_delay, ...), at most error_delay_cap; 0: off.
    error_delay: float = 0.0
    error_delay_cap: float = 30.0
    # Pregreet: the first line of the greeting ("220-"), then greet_wait seconds, then
    # the rest; a client that talks meanwhile is an early talker. 0: off. A client
    # address that waited is remembered in the shared store for pass_ttl seconds.
    greet_wait: float = 0.0
    pregreet_action: ScreenAction = ScreenAction.DROP
    pass_ttl: float = 86400.0


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
class Emulation:
    """Faithful PIX 6.x Mailguard for labs (``serve --emulate pix``). Never on by
    default; loudly labelled when on."""

    pix: bool = False
    rewrite: PixRewrite = PixRewrite.NOOP
    split_eod_bug: bool = False  # CSCds90792: a split end-of-data is never passed on


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode = Mode.MAILGUARD
    allowed_verbs: frozenset[str] = MAILGUARD_VERBS
    ehlo_keywords: frozenset[str] = DEFAULT_EHLO_KEYWORDS
    banner: BannerPolicy = BannerPolicy.GENERIC
    banner_text: str = ""
    hostname: str = "smtpguard.invalid"
    smuggling: Smuggling = Smuggling.REJECT
    starttls: StartTls = StartTls.STRIP
    # Tell the server the real client address with XCLIENT (Postfix
    # smtpd_authorized_xclient_hosts) on every upstream connection.
    xclient: bool = False
    # When the server refuses XCLIENT or does not offer it: refuse the client with
    # 421 4.7.0 (False), or carry on with the client seen as the gateway (True).
    xclient_fail_open: bool = False
    checks: Checks = field(default_factory=Checks)
    # Pipelined commands awaiting replies before we stop reading (RFC 2920 §3.1 lets
    # a client send a whole group; 100 covers the RCPT default limit).
    max_pending: int = 128
    # Client lines with a bare CR, bare LF or NUL refused in one session before the
    # gateway closes it (Postfix's smtpd_forbid_bare_newline closes at the first).
    bad_line_limit: int = 3
    # BDAT chunks larger than this close the connection instead of being drained.
    bdat_drain_limit: int = 64 * 1024 * 1024
    timeouts: Timeouts = field(default_factory=Timeouts)
    emulation: Emulation = field(default_factory=Emulation)
    # Duplicate suppression ([dedupe]): at the end of data the session asks its driver
    # whether the server already accepted this transaction (core/dedupe.py).
    dedupe: bool = False
    dedupe_answer: DedupeReply = DedupeReply.QUEUE_ID
    # Shared rate limits: a ``rate-limit`` finding is counted by the driver in the
    # shared store (per client or sender address, across workers and instances) and
    # what it concerns waits for the count (core/ratelimit.py); off: per session.
    shared_rates: bool = False
    screen: Screens = field(default_factory=Screens)
    # Upstream connections a session may try, one after another, before one greets
    # with 220 (the driver gives each try the next upstream server): the number of
    # servers in ``[gateway] upstream``.
    upstream_tries: int = 1

    @classmethod
    def for_mode(cls, mode: Mode, **kw: object) -> Policy:
        verbs = MAILGUARD_VERBS if mode is Mode.MAILGUARD else ESMTP_VERBS
        return cls(mode=mode, allowed_verbs=verbs, **kw)  # type: ignore[arg-type]
