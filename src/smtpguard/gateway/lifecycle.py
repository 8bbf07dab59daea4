"""The lines of ``serve``'s own life, with their IDs (docs/events.md).

Each is one line on stderr, shown at any log level and in the configured
``log_format`` (:func:`smtpguard.applog.lifecycle`): a bare ``smtpguard: ...`` line in
text, a JSON object with its ``event`` and fields in JSON. The start-up block is
rendered by :mod:`~smtpguard.gateway.startblock` under :data:`STARTED`.
"""

from __future__ import annotations

import os
from typing import Final

from smtpguard.applog import lifecycle

STARTED: Final = "SG-GATEWAY-STARTED"
DRAINING: Final = "SG-GATEWAY-DRAINING"
CUT: Final = "SG-GATEWAY-CUT"
STOPPED: Final = "SG-GATEWAY-STOPPED"
FAILED: Final = "SG-GATEWAY-FAILED"
LOG_REOPENED: Final = "SG-LOG-REOPENED"

# Why sessions were cut short of the end of their transaction (CUT's ``reason``).
SECOND_SIGNAL: Final = "second stop signal"
GRACE_OVER: Final = "drain grace over"


def _sessions(n: int) -> str:
    return "1 session" if n == 1 else f"{n} sessions"


def draining() -> None:
    lifecycle(DRAINING, "draining sessions...")


def cut(sessions: int, reason: str) -> None:
    """Sessions still open when the drain was cut short, each told 421 4.3.2."""
    lifecycle(
        CUT,
        f"{reason}: stopping now, {_sessions(sessions)} cut (each client told 421 4.3.2)",
        sessions_cut=sessions,
        reason=reason,
    )


def stopped() -> None:
    lifecycle(STOPPED, "stopped")


def failed(reason: str) -> None:
    lifecycle(FAILED, f"cannot serve: {reason}", reason=reason)


def reopened(paths: list[str], signal_name: str) -> None:
    """What a SIGUSR1 or SIGHUP re-opened, per process (each worker has its files)."""
    pid = os.getpid()
    if paths:
        what = "re-opened " + ", ".join(paths)
    else:
        what = "no log file to re-open (the application log goes to stderr)"
    lifecycle(LOG_REOPENED, f"{signal_name} (pid {pid}): {what}", files=paths, signal=signal_name)
