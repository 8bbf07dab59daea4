"""One application-log line per finished session, at info.

An administrator watching ``smtpguard serve`` in a terminal sees mail flow: who
connected, what became of their messages and commands, how long it took. The level
is info, so a daemon (default level warning) stays quiet; on a terminal the default
level is info (:func:`smtpguard.config.load.effective_log_level`). JSON logs carry
the same numbers as fields.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtpguard.core.session import Session

log = logging.getLogger("smtpguard.gateway")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(peer: str, relayed: int, refused: int, commands_refused: int, octets: int) -> str:
    """What happened in a session, in words: "2 messages relayed (1234 octets), 1 refused"."""
    parts = [_count(relayed, "message") + " relayed"]
    if octets:
        parts[0] += f" ({octets} octets)"
    if refused:
        parts.append(f"{refused} refused")
    if commands_refused:
        parts.append(_count(commands_refused, "command") + " refused")
    return f"{peer} " + ", ".join(parts)


def log_session(sid: str, peer: str, session: Session, seconds: float) -> None:
    """Log the end of a session from the core session's counters."""
    if not log.isEnabledFor(logging.INFO):
        return
    relayed, refused = session.messages_relayed, session.messages_refused
    commands_refused, octets = session.commands_refused, session.message_octets
    log.info(
        "%s session closed after %.1f s: %s",
        sid,
        seconds,
        summary(peer, relayed, refused, commands_refused, octets),
        extra={
            "session": sid,
            "peer": peer,
            "messages_relayed": relayed,
            "messages_refused": refused,
            "commands_refused": commands_refused,
            "message_octets": octets,
            "duration": round(seconds, 3),
        },
    )
