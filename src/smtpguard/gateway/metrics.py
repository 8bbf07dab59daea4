"""Metrics hooks of the gateway. The default records nothing.

The shell calls these at a few points (session start and end, policy events,
upstream errors, reply latency); counters that change per command are kept by the
core session and handed over once, when the session ends, so the hot path pays
nothing for metrics. An implementation may only count in the hooks and publish in
:meth:`Metrics.flush`, which the gateway calls once a second and when it stops.
"""

from __future__ import annotations

from smtpguard.core.session import Session


class Metrics:
    """No-op metrics sink; a Prometheus implementation overrides these."""

    def session_opened(self) -> None:
        pass

    def session_refused(self, reason: str) -> None:
        pass

    def session_closed(self, session: Session) -> None:
        pass

    def policy_event(self, event_id: str) -> None:
        pass

    def upstream_error(self, kind: str) -> None:
        pass

    def reply_latency(self, seconds: float) -> None:
        pass

    def flush(self) -> None:
        """Publish what was counted since the last call (every second, and at stop)."""
