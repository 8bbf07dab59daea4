"""The shared session model every log parser speaks.

Parsers turn lines into *events*; they never decide what a finding is, except when
the log states the problem outright (Postfix "timeout after DATA", Exim "SMTP data
timeout", a Zeek record whose last reply is 354). Two families of events exist:

* dialogue events (:class:`Connect`, :class:`ClientCommand`, :class:`ServerReply`,
  :class:`DataSize`, :class:`Disconnect`) for logs that record the SMTP conversation
  line by line (Exchange IMS, IIS W3C, Exchange 2007+ protocol logs, smtpguard's own);
  :mod:`smtpguard.logscan.sessions` replays them through one state machine;
* summary events (:class:`Delivered`, :class:`Flag`) for logs that record outcomes
  (Postfix, Exim, Zeek).

The roles are SMTP roles, not log directions: a ``ClientCommand`` is always sent by
the SMTP client, whether the log's owner was the receiving or the sending side.
All events are frozen; times are naive UTC-ish datetimes (see ``timefmt``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from smtpguard.core.grammar import Command, ReplyLine


class Kind(enum.StrEnum):
    STALLED_DATA = "stalled_data"
    DUPLICATE = "duplicate"
    EHLO_REJECTED = "ehlo_rejected"
    MASKED_BANNER = "masked_banner"
    PIX_WORKAROUND = "pix_workaround"
    SUPPRESSED = "suppressed_copy"  # a re-sent copy smtpguard's [dedupe] answered itself
    PIX_REWRITE = "pix_rewrite"
    # A server-side loss in DATA that the gateway's own log explains: it refused the
    # message, or suppressed a re-sent copy, and aborted its upstream on purpose.
    GATEWAY_ABORT = "gateway_abort"
    # The end of data reached the server and it accepted the message, but only after
    # the client side had given up: a slow server, not a filter eating CRLF.CRLF.
    SLOW_SERVER = "slow_server"


class Side(enum.StrEnum):
    """Which end of the SMTP conversation wrote the log."""

    RECEIVING = "receiving"
    SENDING = "sending"


@dataclass(frozen=True, slots=True)
class Connect:
    line: int
    time: datetime | None
    session: str
    peer: str
    side: Side = Side.RECEIVING


@dataclass(frozen=True, slots=True)
class ClientCommand:
    line: int
    time: datetime | None
    session: str
    command: Command


@dataclass(frozen=True, slots=True)
class ServerReply:
    line: int
    time: datetime | None
    session: str
    reply: ReplyLine


@dataclass(frozen=True, slots=True)
class DataSize:
    """Size of the message data the client sent (never its content)."""

    line: int
    time: datetime | None
    session: str
    size: int
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class Disconnect:
    line: int
    time: datetime | None
    session: str


class Delivered(NamedTuple):
    """One copy of a message that reached the end of DATA (accepted or stalled).

    A NamedTuple rather than a frozen dataclass: one is built for every message of
    a log, and a tuple is built several times faster (immutable all the same).

    ``mail_from`` is None when the log does not say who sent it ("" is the null
    sender). ``queue_id`` names the sender's queue file when that is all that links
    retries (Postfix smtp without a Message-ID); ``leg`` keeps copies apart that
    belong to different hops of one message (a tracking log's server and event).
    ``start``/``end``: the session's connect and its end (final reply, or the end of
    a stalled session), when the log shows them; for the HTML timeline.
    """

    line: int
    time: datetime | None
    session: str
    peer: str
    message_id: str = ""
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    size: int | None = None
    stalled: bool = False
    side: Side = Side.RECEIVING
    queue_id: str = ""
    leg: str = ""
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Flag:
    """A problem the log states itself; becomes a finding as is."""

    line: int
    time: datetime | None
    session: str
    peer: str
    kind: Kind
    detail: str
    start: datetime | None = None  # the session's connect, when the log shows it
    side: Side = Side.RECEIVING  # which end wrote it: a server's loss, or a sender's


@dataclass(frozen=True, slots=True)
class UpstreamEnd:
    """smtpguard ``jsonl``: how the gateway's leg to the server ended for one message.

    Written for every transaction whose DATA the server answered 354 (the upstream
    leg, ``gw>server``/``server>gw``). ``line``/``time``: the server's 354;
    ``end_line``/``end_time``: its final reply (``reply``, code and text), or where
    the gateway dropped that connection (a fresh upstream greeting, the session's
    end; ``reply`` is then empty). ``cause_*``: the policy
    event that made the gateway abort it (a refusal, ``SG-DEDUPE-SUPPRESSED``,
    ``SG-UPSTREAM-TIMEOUT``…), empty when none was logged. ``terminator_sent``: the
    client's end of data was relayed (neither refused nor held for dedupe).
    """

    line: int
    time: datetime | None
    session: str
    end_line: int
    end_time: datetime | None
    client_peer: str
    mail_from: str | None
    rcpt_to: tuple[str, ...]
    accepted: bool
    reply: str
    cause_id: str
    cause_line: int
    cause_message: str
    terminator_sent: bool
    client_replied: bool  # the client got a final reply to its end of data


Event = (
    Connect | ClientCommand | ServerReply | DataSize | Disconnect | Delivered | Flag | UpstreamEnd
)


@dataclass(frozen=True, slots=True)
class Copy:
    """Where one copy of a duplicated message was seen."""

    file: str
    line: int
    time: datetime | None
    peer: str
    stalled: bool = False
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    file: str
    line: int
    time: datetime | None
    peer: str
    session: str
    detail: str
    copies: tuple[Copy, ...] = field(default=())
    start: datetime | None = None  # session connect (timeline bar), if known
    sender: str | None = None  # envelope sender, if known
    # What another log says caused it (gateway_abort, slow_server): the gateway's
    # event id (or "" when it logged none), and where that log says so.
    cause: Cause | None = None

    def as_json(self) -> dict[str, object]:
        obj: dict[str, object] = {
            "kind": str(self.kind),
            "file": self.file,
            "line": self.line,
            "time": self.time.isoformat() if self.time else None,
            "peer": self.peer,
            "session": self.session,
            "detail": self.detail,
        }
        if self.cause is not None:  # an added key, only on correlated findings
            obj["cause"] = {
                "event": self.cause.event,
                "file": self.cause.file,
                "line": self.cause.line,
            }
        return obj


@dataclass(frozen=True, slots=True)
class Cause:
    event: str
    file: str
    line: int
