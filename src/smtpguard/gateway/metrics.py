"""Metrics hooks of the gateway. The default records nothing.

The shell calls these at a few points (session start and end, policy events,
upstream errors, reply latency, each upstream server's state and outcomes);
counters that change per command are kept by the core session and handed over
once, when the session ends, so the hot path pays nothing for metrics. An
implementation may only count in the hooks and publish in :meth:`Metrics.flush`,
which the gateway calls once a second and when it stops.
"""

from __future__ import annotations

from typing import Protocol

from mypy_extensions import mypyc_attr


class SessionCounts(Protocol):
    """What :meth:`Metrics.session_closed` reads of a finished core session.

    A Protocol, not :class:`smtpguard.core.session.Session`: this module is compiled
    (setup.py), a parameter of a compiled class's type is checked at every call, and
    tests hand the hooks stand-ins with chosen counts.
    """

    @property
    def messages_relayed(self) -> int: ...
    @property
    def messages_refused(self) -> int: ...
    @property
    def message_octets(self) -> int: ...
    @property
    def commands(self) -> dict[tuple[str, str], int]: ...


# Compiled (setup.py); interpreted subclasses allowed: tests count with their own.
@mypyc_attr(allow_interpreted_subclasses=True)
class Metrics:
    """No-op metrics sink; a Prometheus implementation overrides these."""

    def session_opened(self) -> None:
        pass

    def session_refused(self, reason: str) -> None:
        pass

    def session_closed(self, session: SessionCounts) -> None:
        pass

    def policy_event(self, event_id: str) -> None:
        pass

    def upstream_error(self, kind: str) -> None:
        pass

    def reply_latency(self, seconds: float) -> None:
        pass

    def upstream_state(self, server: str, up: bool) -> None:
        """An upstream server (``HOST:PORT``) is up or down (start, and each change)."""

    def upstream_session(self, server: str, seconds: float) -> None:
        """A session's connection to ``server`` was greeted with 220, ``seconds``
        after the connect started."""

    def upstream_failure(self, server: str) -> None:
        """A connection to (or a check of) ``server`` failed before its greeting."""

    def flush(self) -> None:
        """Publish what was counted since the last call (every second, and at stop)."""
