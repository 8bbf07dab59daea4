"""The config file's schema: pydantic models that mirror :class:`~smtpguard.core.policy.Policy`
plus the gateway's own settings.

Policy keys default to ``None``, meaning "not set in the file": the built-in default
then comes from ``core/policy.py``, so defaults live in one place and a check whose
``limit`` alone is set keeps its default action. Gateway, access and protocol-log
keys have their defaults here. Numbers, booleans and strings are strict (``"100"`` is
not an integer); enumerations take their documented spelling. Every field carries a
description: ``docs/config.md`` is generated from these models.

Each key is declared once, here: its type, default and description, the ``serve``
flag that overrides it (:class:`Flag`) and whether a reload applies it
(:data:`RESTART` marks the keys and sections it does not). ``serve``'s argparse,
``check-config``'s text and JSON, ``docs/config.md`` and the reload's list of
changes that need a restart are all drawn from these models
(:mod:`smtpguard.config.keys` walks them). Choices are enums, so
the flag's choices, the error text and the docs name the same values.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)
from pydantic import StrictStr as Str

from smtpguard.applog import LogFormat, LogLevel
from smtpguard.core.policy import (
    ALWAYS_STRIPPED_KEYWORDS,
    Balance,
    BannerPolicy,
    DedupeReply,
    Mode,
    PixRewrite,
    ScreenAction,
    Smuggling,
    StartTls,
    Verdict,
)
from smtpguard.logs import ProtocolLogFormat
from smtpguard.netaddr import split_hostport
from smtpguard.proxyproto import ProxyVersion


@dataclass(frozen=True)
class Flag:
    """The ``serve`` flag that overrides the key it annotates.

    The flag's type and choices come from the key's type, its help from the key's
    description and default. A true/false key's flag is a switch that sets it true,
    or, with ``word``, takes that one word ("--emulate pix"); a list key's flag is
    repeatable (each use adds one item); a section's flag takes ``NAME=VALUE`` for
    any key of the section ("--timeout connect=30").
    """

    name: str
    metavar: str | None = None
    word: str | None = None


@dataclass(frozen=True)
class Restart:
    """A reload keeps the running value of this key (or section): it needs a new
    socket, process or store. A reload that changes it says so in the log."""


RESTART = Restart()


@dataclass(frozen=True)
class FilePath:
    """The key holds a file or directory path: relative, written in a config file, it
    is resolved against the file's directory (as a flag, the current directory)."""


FILE_PATH = FilePath()


@dataclass(frozen=True)
class Unset:
    """What the key means when it is not set, where "(not set)" would not say it
    (check-config's text)."""

    meaning: str


# RFC 5321 §4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_EHLO_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VERB = re.compile(r"[A-Za-z]{1,16}")


def _verb(value: str) -> str:
    if not _VERB.fullmatch(value):
        raise ValueError('an SMTP command verb (letters only, e.g. "VRFY")')
    return value.upper()


def _keyword(value: str) -> str:
    if not _EHLO_KEYWORD.fullmatch(value):
        raise ValueError("an EHLO keyword (letters, digits and '-', e.g. \"PIPELINING\")")
    word = value.upper()
    if word in ALWAYS_STRIPPED_KEYWORDS or word.startswith("X-"):
        raise ValueError(f"an EHLO keyword that may be allowed ({word} is always stripped)")
    return word


def _one_line(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("one line of text (no CR, LF or NUL)")
    return value.strip()


def _hostname(value: str) -> str:
    if not value or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError('a host name without spaces, e.g. "mx.example.com"')
    return value


def _hostport(value: str) -> str:
    try:
        split_hostport(value, default_host="127.0.0.1")
    except ValueError:
        raise ValueError('"HOST:PORT" with a port 0-65535, e.g. "127.0.0.1:2525"') from None
    return value


def _one_or_more(value: object) -> object:
    """One address or a list of them: one is a list of one."""
    return [value] if isinstance(value, str) else value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"a valid regular expression ({exc})") from None
    return value


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValueError(
            'a network like "192.0.2.0/24" or "2001:db8::/32", or one address '
            "(host bits must be zero)"
        ) from None


Verb = Annotated[Str, AfterValidator(_verb)]
Keyword = Annotated[Str, AfterValidator(_keyword)]
OneLine = Annotated[Str, AfterValidator(_one_line)]
Hostname = Annotated[Str, AfterValidator(_hostname)]
HostPort = Annotated[Str, AfterValidator(_hostport)]
Regex = Annotated[Str, AfterValidator(_regex)]
NetworkStr = Annotated[Str, AfterValidator(_network)]
Seconds = Annotated[StrictFloat, Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitCheck(Section):
    """A check with a threshold. Unset keys keep that check's built-in default."""

    action: Verdict | None = Field(default=None, description="what to do when the check fires")
    limit: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description="fires above this value; 0 turns the check off"
    )
    rate: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None,
        description='with action = "rate-limit": events that pass per period, per client '
        "address (sender_length: per sender address), across all workers and instances",
    )
    period: Seconds | None = Field(
        default=None, description='with action = "rate-limit": the period, in seconds'
    )


class MimeStructureCheck(LimitCheck):
    """``limit`` is the MIME nesting depth; the other keys bound the MIME reader."""

    header_block: Annotated[StrictInt, Field(ge=1024)] | None = Field(
        default=None,
        description="octets of one MIME part's Content-Type, Content-Disposition and "
        "Content-Transfer-Encoding fields",
    )
    header_total: Annotated[StrictInt, Field(ge=1024)] | None = Field(
        default=None, description="octets of those fields in all parts of one message"
    )
    parts: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="MIME parts in one message (enclosed messages count)"
    )


class PatternCheck(Section):
    """A check matching regular expressions (Python syntax, case-insensitive)."""

    action: Verdict | None = Field(default=None, description="what to do when the check fires")
    patterns: list[Regex] | None = Field(
        default=None, description="regular expressions; an empty list turns the check off"
    )
    allow: StrictBool | None = Field(
        default=None, description="true: fire when NO pattern matches (an allow-list)"
    )
    rate: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None,
        description='with action = "rate-limit": events that pass per period, per client '
        "address (sender_pattern: per sender address), across all workers and instances",
    )
    period: Seconds | None = Field(
        default=None, description='with action = "rate-limit": the period, in seconds'
    )


class Checks(Section):
    command_line_length: LimitCheck = Field(
        default_factory=LimitCheck, description="octets in a command line with its CRLF"
    )
    rcpt_count: LimitCheck = Field(
        default_factory=LimitCheck, description="RCPT commands per transaction"
    )
    header_line_length: LimitCheck = Field(
        default_factory=LimitCheck, description="octets in one header line (without CRLF)"
    )
    header_size: LimitCheck = Field(
        default_factory=LimitCheck, description="total octets of the header section"
    )
    to_cc_count: LimitCheck = Field(
        default_factory=LimitCheck, description="addresses in To: and Cc: fields"
    )
    body_line_length: LimitCheck = Field(
        default_factory=LimitCheck, description="octets in one body line (without CRLF)"
    )
    sender_length: LimitCheck = Field(
        default_factory=LimitCheck, description="octets in the MAIL FROM address"
    )
    invalid_recipients: LimitCheck = Field(
        default_factory=LimitCheck,
        description="RCPT commands the server refused (5xx), per session",
    )
    message_size: LimitCheck = Field(
        default_factory=LimitCheck, description="message octets, declared (SIZE=) and actual"
    )
    mime_filename_length: LimitCheck = Field(
        default_factory=LimitCheck, description="length of a MIME part's file name"
    )
    received_count: LimitCheck = Field(
        default_factory=LimitCheck,
        description="Received: header fields in a message (a mail loop, RFC 5321 §6.3)",
    )
    mime_structure: MimeStructureCheck = Field(
        default_factory=MimeStructureCheck,
        description="MIME nesting depth; fires also past the other bounds of "
        "[checks.mime_structure] and on a MIME header block the reader cannot decode",
    )
    special_characters: Verdict | None = Field(
        default=None,
        description="action for '|', unbalanced '<>' or control characters in "
        "MAIL/RCPT addresses (rate-limit is not available here)",
    )
    sender_pattern: PatternCheck = Field(
        default_factory=PatternCheck, description="MAIL FROM address patterns"
    )
    recipient_domains: PatternCheck = Field(
        default_factory=PatternCheck, description="RCPT domain patterns (mail-relay restriction)"
    )
    mime_filename_pattern: PatternCheck = Field(
        default_factory=PatternCheck, description="MIME part file name patterns"
    )
    mime_type_pattern: PatternCheck = Field(
        default_factory=PatternCheck, description="MIME part Content-Type patterns"
    )
    transfer_encoding_pattern: PatternCheck = Field(
        default_factory=PatternCheck, description="Content-Transfer-Encoding patterns"
    )


class TimeoutsSection(Section):
    client_idle: Seconds | None = Field(
        default=None, description="client silent this long: 421, close"
    )
    connect: Seconds | None = Field(default=None, description="TCP connect to the upstream")
    greeting: Seconds | None = Field(default=None, description="upstream's 220 greeting")
    command: Seconds | None = Field(default=None, description="upstream's reply to a command")
    data_init: Seconds | None = Field(default=None, description="upstream's 354 reply to DATA")
    data_end: Seconds | None = Field(default=None, description="upstream's reply to the final dot")


class EmulationSection(Section):
    pix: Annotated[StrictBool | None, Flag("--emulate", word="pix")] = Field(
        default=None,
        description="faithful PIX 6.x Mailguard, for labs only (never in production): "
        "masked banner, refused verbs rewritten and passed on, one command at a time",
    )
    rewrite: Annotated[PixRewrite | None, Flag("--emulate-rewrite")] = Field(
        default=None, description="how the emulation masks a refused verb (noop: 6.x, xxxx: 7.x)"
    )
    split_eod_bug: Annotated[StrictBool | None, Flag("--emulate-bug", word="split-eod")] = Field(
        default=None,
        description="with the PIX emulation, reproduce CSCds90792: an end of data split "
        "across TCP segments is never passed on (senders time out and re-send)",
    )


class GatewaySection(Section):
    listen: Annotated[HostPort, Flag("--listen", "HOST:PORT"), RESTART] = Field(
        default="127.0.0.1:2525", description="address to listen on"
    )
    upstream: Annotated[
        Annotated[list[HostPort], Field(min_length=1)] | None,
        BeforeValidator(_one_or_more),
        Flag("--upstream", "HOST:PORT"),
        Unset("(not set: the built-in mailbox)"),
    ] = Field(
        default=None,
        description="the real mail server, or a list of them (upstream_policy chooses); "
        "not set: the built-in mailbox",
    )
    upstream_policy: Annotated[Balance, Flag("--upstream-policy")] = Field(
        default=Balance.FAILOVER,
        description="with several upstream servers: failover (the first healthy one, in "
        "order) or round-robin (the healthy ones in turn)",
    )
    upstream_check_interval: Annotated[
        StrictFloat, Field(ge=0), Flag("--upstream-check-interval", "SECONDS")
    ] = Field(
        default=0.0,
        description="seconds between health checks of each upstream server (connect, "
        "read the greeting, QUIT); 0: off, servers are judged by sessions alone",
    )
    upstream_fail_limit: Annotated[StrictInt, Field(ge=1)] = Field(
        default=3,
        description="consecutive failures (refused, timed out, lost or 4xx before the "
        "220 greeting) that mark an upstream server down",
    )
    upstream_backoff: Seconds = Field(
        default=30.0,
        description="without health checks: seconds a server marked down is skipped "
        "before a session tries it again (with checks, it is back when a check passes)",
    )
    workers: Annotated[StrictInt, Field(ge=0), Flag("--workers", "N"), RESTART] = Field(
        default=0,
        description="worker processes sharing the port (SO_REUSEPORT); 0: one per CPU core",
    )
    listen_backlog: Annotated[
        StrictInt, Field(ge=1, le=65535), Flag("--listen-backlog", "N"), RESTART
    ] = Field(
        default=1024,
        description="connections the kernel queues per listening socket before the "
        "gateway accepts them (listen(2) backlog; capped by net.core.somaxconn)",
    )
    max_sessions: Annotated[StrictInt, Field(ge=1), Flag("--max-sessions", "N")] = Field(
        default=1000, description="concurrent sessions per worker; more get 421"
    )
    drain_grace: Annotated[StrictFloat, Field(ge=0), Flag("--drain-grace", "SECONDS")] = Field(
        default=30.0, description="on SIGTERM, seconds allowed for transactions in flight"
    )
    maildir: Annotated[Str, Flag("--maildir", "DIR"), RESTART, FILE_PATH] = Field(
        default="./smtpguard-mail",
        description="Maildir of the built-in mailbox (no upstream); relative: in a config "
        "file to its directory, as a flag or the default to the current directory",
    )
    upstream_proxy_protocol: Annotated[ProxyVersion, Flag("--upstream-proxy"), RESTART] = Field(
        default=ProxyVersion.OFF,
        description="send a PROXY protocol header to the upstream so it sees the real client",
    )
    metrics_listen: Annotated[
        HostPort | None,
        Flag("--metrics-listen", "HOST:PORT"),
        RESTART,
        Unset("(not set: no metrics endpoint)"),
    ] = Field(
        default=None,
        description="serve Prometheus /metrics here (all workers summed); not set: off",
    )
    pid_file: Annotated[Str | None, Flag("--pid-file", "FILE"), RESTART, FILE_PATH] = Field(
        default=None,
        description="write the main process's pid here while it serves, for a logrotate "
        "postrotate without systemd (deploy/logrotate); removed at exit; relative: in a "
        "config file to its directory, as a flag to the current directory",
    )
    log_format: Annotated[LogFormat, Flag("--log-format"), RESTART] = Field(
        default=LogFormat.TEXT, description="application log on stderr: text lines or JSON lines"
    )
    log_level: Annotated[
        LogLevel | None,
        Flag("--log-level"),
        Unset("(not set: warning; info, one line per session, when stderr is a terminal)"),
    ] = Field(
        default=None,
        description="application log level on stderr; not set: warning, or info (one line "
        "per session) when stderr is a terminal",
    )


class DropOrLog(enum.StrEnum):
    """The actions a screen that catches a client at once can take (no reject: there
    is no command to refuse in its place)."""

    DROP = "drop-connection"
    LOG = "log"


class ProtocolLogSection(Section):
    path: Annotated[Str | None, Flag("--protocol-log", "FILE"), FILE_PATH] = Field(
        default=None,
        description="append a protocol log to this file (relative: in a config file to "
        "its directory, as a flag to the current directory)",
    )
    format: Annotated[ProtocolLogFormat, Flag("--protocol-log-format")] = Field(
        default=ProtocolLogFormat.IMS,
        description="ims: Exchange IMS layout; jsonl: one JSON object per event",
    )


class TlsSection(Section):
    certfile: Annotated[Str | None, Flag("--tls-cert", "FILE"), FILE_PATH] = Field(
        default=None,
        description='PEM certificate chain the gateway shows clients (starttls = "terminate")',
    )
    keyfile: Annotated[Str | None, Flag("--tls-key", "FILE"), FILE_PATH] = Field(
        default=None, description="PEM private key, if not in the certificate file"
    )
    verify_upstream: StrictBool = Field(
        default=False,
        description="check the upstream's certificate and name (default: encrypt "
        "without checks, as MTAs do)",
    )
    cafile: Annotated[Str | None, FILE_PATH] = Field(
        default=None, description="CA bundle for verify_upstream (default: the system's)"
    )
    implicit_listen: Annotated[HostPort | None, Flag("--tls-listen", "HOST:PORT"), RESTART] = Field(
        default=None,
        description="also listen here with TLS from the first byte (port 465 style, "
        "RFC 8314); needs a certificate",
    )


class AccessSection(Section):
    allow: list[NetworkStr] = Field(
        default=[], description="client networks allowed to connect; empty: all not denied"
    )
    deny: list[NetworkStr] = Field(
        default=[], description="client networks refused with 554 (most specific match wins)"
    )
    max_sessions_per_ip: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0, description="concurrent sessions per client address; 0: no cap"
    )
    connection_rate: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0, description="connections per client address per rate_period; 0: no limit"
    )
    rate_period: Seconds = Field(default=60.0, description="period of connection_rate, in seconds")
    normalize_networks: list[NetworkStr] = Field(
        default=[],
        description='client networks whose bare CR/LF are normalised (smuggling = "normalize")',
    )
    proxy_protocol_from: Annotated[list[NetworkStr], Flag("--proxy-from", "NETWORK")] = Field(
        default=[],
        description="load balancers that must send a PROXY protocol v1/v2 header; the real "
        "client is taken from it (other peers are never trusted with one)",
    )


def _state_url(value: str) -> str:
    if value == "local" or value.startswith(("redis://", "rediss://", "unix://")):
        return value
    raise ValueError(
        '"local" or a Redis/Valkey URL: "redis://HOST:PORT/DB", "rediss://..." '
        'or "unix:///path/redis.sock"'
    )


class StateSection(Section):
    url: Annotated[Str, AfterValidator(_state_url)] = Field(
        default="local",
        description='where limits and duplicate keys are shared: "local" (SQLite file, all '
        'workers of this host) or "redis://HOST:PORT/DB" (Redis/Valkey, a whole fleet)',
    )
    directory: Annotated[Str | None, FILE_PATH] = Field(
        default=None,
        description='with url = "local": directory of the database file, on a local disk '
        "(relative: to this file's directory); not set: $STATE_DIRECTORY (systemd), else "
        "$XDG_STATE_HOME/smtpguard, else /var/lib/smtpguard for root and "
        "~/.local/state/smtpguard for other users. Made only when a feature needs it "
        "(dedupe, per-address limits, rate-limit checks)",
    )
    timeout: Seconds = Field(
        default=0.5, description="seconds a store operation may take; then the gateway fails open"
    )
    retry: Seconds = Field(
        default=1.0, description="after a store failure, seconds before it is tried again"
    )
    lease: Annotated[StrictFloat, Field(ge=3)] = Field(
        default=30.0,
        description="a session's per-address slot lives this long past its last renewal "
        "(renewed every third of it; frees the slots of a process that died)",
    )
    prefix: Str = Field(default="smtpguard:", description="prefix of every Redis key")


class DedupeSection(Section):
    enabled: Annotated[StrictBool, Flag("--dedupe")] = Field(
        default=False,
        description="answer a re-sent copy of a message the server already accepted with "
        "250 without relaying it again (envelope + SHA-256 of the message)",
    )
    window: Annotated[Seconds, Flag("--dedupe-window", "SECONDS")] = Field(
        default=86400.0, description="seconds a message is remembered after the server's 250"
    )
    answer: DedupeReply = Field(
        default=DedupeReply.QUEUE_ID,
        description='the reply to a suppressed copy: "queue-id": "250 2.0.0 Already accepted '
        'as <queue id>"; "ok": "250 2.0.0 Ok", which tells a client that sends another\'s '
        "exact bytes nothing of the first copy (docs/scale-out.md)",
    )


class ScreenSection(Section):
    non_smtp: StrictBool = Field(
        default=True,
        description="catch clients that open with another protocol: HTTP (GET, POST, "
        "HEAD, PUT, OPTIONS, CONNECT), USER (POP3/FTP) or a TLS ClientHello",
    )
    non_smtp_action: DropOrLog = Field(
        default=DropOrLog.DROP,
        description="drop-connection: 554 5.7.0 and close at once; log: only the event",
    )
    pipelining: StrictBool = Field(
        default=False,
        description="catch commands sent before the reply to the previous one when "
        "PIPELINING was not offered (mailguard mode; esmtp after HELO or with the keyword "
        "stripped)",
    )
    pipelining_action: ScreenAction = Field(
        default=ScreenAction.REJECT,
        description="reject: each command sent ahead gets 503 5.5.0 (QUIT is honoured); "
        "drop-connection: 421 4.7.0 after the replies owed, then close; log: only the event",
    )
    error_limit: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0,
        description="close the session (421 4.7.0) at this many error replies (4xx/5xx, "
        "the gateway's and the server's); 0: no limit",
    )
    error_delay: Annotated[StrictFloat, Field(ge=0)] = Field(
        default=0.0,
        description="tarpit: each error reply after the third is held this many seconds "
        "times its rank past the third (1x, 2x, ...); 0: off. Never a 2xx, never other "
        "sessions",
    )
    error_delay_cap: Seconds = Field(
        default=30.0, description="the longest an error reply is held by error_delay"
    )
    greet_wait: Annotated[StrictFloat, Field(ge=0)] = Field(
        default=0.0,
        description='pregreet: send "220-" at once, the server\'s greeting after this many '
        "seconds; a client that talks before is an early talker; 0: off (uses the "
        "[state] store for the passes)",
    )
    pregreet_action: DropOrLog = Field(
        default=DropOrLog.DROP,
        description="drop-connection: 554 5.5.1 and close at once; log: only the event",
    )
    pass_ttl: Seconds = Field(
        default=86400.0,
        description="seconds a client address that waited for the whole greeting is "
        "greeted without the wait (all workers; with Redis, all instances)",
    )


class ConfigFile(Section):
    mode: Annotated[Mode | None, Flag("--mode")] = Field(
        default=None,
        description="mailguard: the seven RFC 821 commands; esmtp: ASA-style inspection",
    )
    allowed_verbs: list[Verb] | None = Field(
        default=None, description="commands passed to the server (default: per mode)"
    )
    ehlo_keywords: list[Keyword] | None = Field(
        default=None, description="EHLO keywords the client may see in esmtp mode"
    )
    banner: Annotated[BannerPolicy | None, Flag("--banner", "generic|pix|pass|TEXT")] = Field(
        default=None,
        description="greeting policy: generic, pix mask, pass, or custom text (the flag "
        "takes the text itself)",
    )
    banner_text: OneLine | None = Field(
        default=None, description='greeting text after "220 " with banner = "custom"'
    )
    hostname: Annotated[Hostname | None, Flag("--hostname")] = Field(
        default=None, description="name in the generic banner (default: this host's name)"
    )
    smuggling: Smuggling | None = Field(
        default=None,
        description="bare CR/LF/NUL: reject, or normalize (prefer access.normalize_networks)",
    )
    starttls: Annotated[StartTls | None, Flag("--starttls")] = Field(
        default=None,
        description="STARTTLS handling: strip (the server's offer removed), passthrough "
        "(stop inspecting once TLS starts), terminate (TLS on both sides, inspected in "
        "between; needs a certificate)",
    )
    xclient: Annotated[StrictBool | None, Flag("--xclient")] = Field(
        default=None,
        description="send the real client address to the server with XCLIENT "
        "(Postfix smtpd_authorized_xclient_hosts)",
    )
    xclient_fail_open: Annotated[StrictBool | None, Flag("--xclient-fail-open")] = Field(
        default=None,
        description="when the server refuses XCLIENT or does not offer it, carry on with "
        "the client seen as the gateway's address (which Postfix's mynetworks trusts to "
        "relay) instead of refusing the client with 421 4.7.0 (see docs/security.md)",
    )
    max_pending: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="pipelined commands awaiting replies before reading pauses"
    )
    bad_line_limit: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None,
        description="client lines with a bare CR, bare LF or NUL refused before the session "
        "is closed",
    )
    bdat_drain_limit: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description="BDAT chunks larger than this close the connection"
    )
    checks: Checks = Field(default_factory=Checks, description="inspection checks")
    timeouts: Annotated[TimeoutsSection, Flag("--timeout", "NAME=SECONDS")] = Field(
        default_factory=TimeoutsSection, description="timeouts, in seconds"
    )
    emulation: EmulationSection = Field(
        default_factory=EmulationSection, description="PIX emulation (labs)"
    )
    gateway: GatewaySection = Field(
        default_factory=GatewaySection, description="listener and processes"
    )
    protocol_log: Annotated[ProtocolLogSection, RESTART] = Field(
        default_factory=ProtocolLogSection, description="protocol log"
    )
    tls: TlsSection = Field(default_factory=TlsSection, description="TLS certificates")
    access: AccessSection = Field(
        default_factory=AccessSection, description="client access control"
    )
    state: Annotated[StateSection, RESTART] = Field(
        default_factory=StateSection, description="shared state: limits across workers and hosts"
    )
    dedupe: Annotated[DedupeSection, RESTART] = Field(
        default_factory=DedupeSection, description="suppression of re-sent duplicates"
    )
    screen: ScreenSection = Field(
        default_factory=ScreenSection,
        description="protocol screens of bots (docs/screening.md)",
    )
