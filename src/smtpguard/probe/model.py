"""Data model of a probe run: options in, checks and a report out.

Everything here is a frozen value. The runner builds :class:`Check` objects from what
the peer answered; the renderers turn a :class:`ProbeReport` into a table or JSON.
A check carries ``filter_sign`` when what it saw is the fingerprint of a
Mailguard-style filter (masked banner, EHLO refused, rewritten commands, masked
keywords); ``filter_detected`` in the report is the OR of those.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smtpguard.probe.hello import HelloChoice

DEFAULT_PORT = 25
# SMTP submission over implicit TLS (RFC 8314 §3.3): a target on this port gets TLS
# from the first byte unless told otherwise.
IMPLICIT_TLS_PORT = 465
DEFAULT_TIMEOUT = 30.0
# Gap between the segments of the split end-of-data: long enough that no TCP stack or
# middlebox coalesces them, short enough to keep a run brisk.
DEFAULT_GAP = 0.5
# How long to wait for a reply after a bogus end-of-data before sending the real one.
DEFAULT_SMUGGLE_WAIT = 1.0
# How long to wait for the probe's messages to show up in --maildir/--mbox.
DEFAULT_DELIVERY_TIMEOUT = 60.0


class Verdict(enum.Enum):
    OK = "ok"
    PROBLEM = "problem"
    INFO = "info"
    SKIPPED = "skipped"


class Delivered(enum.Enum):
    """Whether a smuggled message reached the mailbox (``--maildir``/``--mbox``)."""

    DELIVERED = "delivered"
    NOT_DELIVERED = "not-delivered"
    UNCHECKED = "unchecked"  # no mailbox given, or it could not be judged


class Outcome(enum.Enum):
    """Result of the split-terminator and smuggling checks, as the JSON shows it."""

    PASSED = "passed"
    FAILED = "failed"
    REJECTED = "rejected"
    ACCEPTED = "accepted"
    UNTESTED = "untested"


@dataclass(frozen=True, slots=True)
class Check:
    id: str
    verdict: Verdict
    detail: str
    filter_sign: bool = False
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "filter_sign": self.filter_sign,
        }
        if self.data:
            out["data"] = dict(self.data)
        return out


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    host: str
    port: int = DEFAULT_PORT
    mail_from: str = ""
    rcpt_to: str = "postmaster"
    helo_name: str = "smtpguard-probe.localdomain"
    send: bool = True
    tls: bool = False
    timeout: float = DEFAULT_TIMEOUT
    gap: float = DEFAULT_GAP
    smuggle_wait: float = DEFAULT_SMUGGLE_WAIT
    implicit_tls: bool = False
    auth_user: str | None = None
    auth_pass: str | None = None
    # The mailbox the target delivers --to into: ("maildir" | "mbox", path).
    mailbox: tuple[str, str] | None = None
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class VariantResult:
    """One smuggling variant: what the replies said, and what the mailbox showed."""

    name: str
    sequence: str  # the bogus bytes, escaped: "\\r\\n.\\n"
    outcome: Outcome  # accepted: the path took the sequence as end of data
    smuggled: Delivered
    detail: str
    replies: tuple[str, ...] = ()
    carrier_id: str | None = None
    smuggled_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "end_of_data": self.outcome.value,
            "smuggled": self.smuggled.value,
            "detail": self.detail,
            "replies": list(self.replies),
            "carrier_message_id": self.carrier_id,
            "smuggled_message_id": self.smuggled_id,
        }


@dataclass(frozen=True, slots=True)
class ProbeReport:
    target: str
    banner: str
    checks: tuple[Check, ...]
    split_terminator: Outcome
    smuggling: Mapping[str, Outcome]
    verdict: Verdict
    summary: str
    variants: tuple[VariantResult, ...] = ()
    mailbox: str | None = None
    hello: HelloChoice | None = None  # the greeting the run used, and why

    @property
    def filter_detected(self) -> bool:
        return any(c.filter_sign for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict is Verdict.PROBLEM else 0

    def check(self, check_id: str) -> Check:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "banner": self.banner,
            "hello": self.hello.to_json() if self.hello else None,
            "filter_detected": self.filter_detected,
            "split_terminator": self.split_terminator.value,
            "smuggling": {k: v.value for k, v in self.smuggling.items()},
            "variants": {v.name: v.to_json() for v in self.variants},
            "mailbox": self.mailbox,
            "verdict": self.verdict.value,
            "summary": self.summary,
            "checks": [c.to_json() for c in self.checks],
        }
