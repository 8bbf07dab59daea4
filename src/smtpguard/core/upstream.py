"""The upstream connection's life cycle: greeting, replay, loss and reconnect."""

from __future__ import annotations

from smtpguard.core import replies
from smtpguard.core.actions import CloseServer
from smtpguard.core.banner import greeting
from smtpguard.core.grammar import Reply
from smtpguard.core.state import END_OF_DATA_VERB, Phase, SessionBase, Upstream


class UpstreamLink(SessionBase):
    def _on_greeting(self, reply: Reply, now: float) -> None:
        if not self._greeted:
            self._greeted = True
            self.upstream = Upstream.READY
            self._server_deadline = None
            self._send_client(greeting(reply, self.policy))
            if reply.code == 421:
                self._closing = True
                self._finish_if_done()
        elif reply.code != 220:
            self._reconnect_failed(f"greeting {reply.code} on reconnect")
        elif self._helo is not None:
            self.upstream = Upstream.REPLAY
            self._server_deadline = now + self.policy.timeouts.command
            self._to_server(self._helo, "EHLO" if self._helo[:4].upper() == b"EHLO" else "HELO")
        else:
            self.upstream = Upstream.READY
            self._server_deadline = None

    def _reconnect_failed(self, why: str) -> None:
        self._policy_event("SG-UPSTREAM-RECONNECT-FAILED", why)
        self._emit(CloseServer(abort=True))
        self.upstream = Upstream.DOWN
        self._abort_with(replies.SERVICE_UNAVAILABLE)

    def _upstream_failed(self, why: str, now: float) -> None:
        """The upstream misbehaved: drop it and handle it like a lost connection."""
        self._policy_event("SG-UPSTREAM-ERROR", f"mail server connection dropped: {why}")
        self._emit(CloseServer(abort=True))
        self._upstream_lost(now)

    def _upstream_lost(self, now: float) -> None:
        was = self.upstream
        self.upstream = Upstream.DOWN
        self._server_deadline = None
        if not self._greeted:
            self._send_client(replies.SERVICE_UNAVAILABLE)
            self._abort_with(None)
        elif was is not Upstream.READY:
            self._reconnect_failed(f"upstream lost while {was.value}")
        elif self.phase is Phase.DATA:
            self._policy_event("SG-UPSTREAM-LOST", "mail server lost during message data")
            self._refusal = replies.MESSAGE_UPSTREAM_LOST
        elif self._awaiting and self._awaiting[0].verb == END_OF_DATA_VERB:
            self._policy_event("SG-UPSTREAM-LOST", "mail server lost before its final reply")
            self._awaiting.popleft().reply = replies.MESSAGE_UPSTREAM_LOST
            self._in_transaction = False
            if self._awaiting:
                self._abort_with(replies.UPSTREAM_LOST)
            else:
                self._reconnect(now)
            self._flush()
        else:
            self._abort_with(replies.UPSTREAM_LOST)
