"""The upstream connection's life cycle: greeting, replay, loss and reconnect."""

from __future__ import annotations

from smtpguard.core import replies
from smtpguard.core.actions import CloseServer, StartTls
from smtpguard.core.banner import greeting
from smtpguard.core.grammar import Reply
from smtpguard.core.policy import StartTls as StartTlsPolicy
from smtpguard.core.state import END_OF_DATA_VERB, Handler, Phase, SessionBase, Upstream


def xtext_addr(ip: str) -> str:
    """XCLIENT ADDR value: IPv6 addresses carry the ``IPV6:`` prefix (Postfix)."""
    return f"IPV6:{ip}" if ":" in ip else ip


class UpstreamLink(SessionBase):
    """Greeting, the gateway's own exchanges with the server (XCLIENT, STARTTLS,
    HELO/EHLO replay on a fresh connection), loss and reconnect.

    The gateway's own commands are *internal*: their replies go to a handler, never
    to the client. They only run while the upstream is not READY (client input is
    held then) or while the client waits for its EHLO reply, so they never interleave
    with client commands.
    """

    def _internal(self, line: bytes, handler: Handler, now: float) -> None:
        self._handlers.append(handler)
        self._server_deadline = now + self.policy.timeouts.command
        verb = line.split(b" ", 1)[0].rstrip(b"\r\n").decode("ascii", "replace").upper()
        self._to_server(line, verb)

    def _on_greeting(self, reply: Reply, now: float) -> None:
        if not self._greeted:
            self._greeted = True
            self._server_deadline = None
            self._send_client(greeting(reply, self.policy))
            if reply.code == 421:
                self.upstream = Upstream.READY
                self._closing = True
                self._finish_if_done()
                return
            if reply.code != 220:  # 554 & co: the server's decision, relayed as is
                self.upstream = Upstream.READY
                return
        elif reply.code != 220:
            self._reconnect_failed(f"greeting {reply.code} on reconnect")
            return
        self.upstream = Upstream.HANDSHAKE
        if self.policy.xclient and self._peer is not None:
            hello = f"EHLO {self.policy.hostname}\r\n".encode()
            self._internal(hello, self._xclient_ehlo_reply, now)
        else:
            self._after_xclient(now)

    def _xclient_ehlo_reply(self, reply: Reply, now: float) -> None:
        keywords = {line.split(" ", 1)[0].upper() for line in reply.lines[1:]}
        if reply.code != 250 or "XCLIENT" not in keywords:
            self._policy_event(
                "SG-XCLIENT-UNAVAILABLE", "mail server does not offer XCLIENT to the gateway"
            )
            self._after_xclient(now)
            return
        assert self._peer is not None
        ip, port = self._peer
        self._internal(
            f"XCLIENT ADDR={xtext_addr(ip)} PORT={port} NAME=[UNAVAILABLE]\r\n".encode(),
            self._xclient_reply,
            now,
        )

    def _xclient_reply(self, reply: Reply, now: float) -> None:
        if reply.code != 220:  # Postfix answers XCLIENT with a fresh 220 greeting
            self._policy_event("SG-XCLIENT-FAILED", f"XCLIENT refused: {reply.code}")
        self._after_xclient(now)

    def _after_xclient(self, now: float) -> None:
        if self._helo is None:
            self._upstream_ready()
        else:  # a fresh connection after a refused message: replay the client's hello
            self._internal(self._helo, self._replay_reply, now)

    def _replay_reply(self, reply: Reply, now: float) -> None:
        if not reply.positive:
            self._reconnect_failed("replayed HELO/EHLO refused")
        elif not self._upstream_tls_first(reply, lambda _r, _n: self._upstream_ready(), now):
            self._upstream_ready()

    def _upstream_ready(self) -> None:
        self.upstream = Upstream.READY
        self._server_deadline = None

    # -- STARTTLS towards the server (terminate mode) ---------------------------------
    def _upstream_tls_first(self, ehlo: Reply, then: Handler, now: float) -> bool:
        """In terminate mode, if the server offers STARTTLS, secure the upstream
        before going on: STARTTLS, handshake, EHLO again; ``then`` gets the new EHLO
        reply (or the first one if TLS could not start). False: nothing to do."""
        if (
            self.policy.starttls is not StartTlsPolicy.TERMINATE
            or self.server_tls
            or ehlo.code != 250
            or not any(line.upper().startswith("STARTTLS") for line in ehlo.lines[1:])
        ):
            return False
        self.upstream = Upstream.HANDSHAKE
        self._tls_then = then
        self._tls_fallback = ehlo
        self._internal(b"STARTTLS\r\n", self._upstream_starttls_reply, now)
        return True

    def _upstream_starttls_reply(self, reply: Reply, now: float) -> None:
        if reply.code == 220:
            self._server_deadline = now + self.policy.timeouts.command
            self._emit(StartTls("server"))
            return
        self._policy_event("SG-TLS-UPSTREAM-FAILED", f"server refused STARTTLS: {reply.code}")
        fallback = self._tls_fallback
        assert fallback is not None
        self._tls_done(fallback, now)

    def _upstream_tls_started(self, now: float) -> None:
        self.server_tls = True
        hello = self._ehlo_line or f"EHLO {self.policy.hostname}\r\n".encode()
        self._internal(hello, self._tls_done, now)  # RFC 3207 §4.2: start over

    def _tls_done(self, reply: Reply, now: float) -> None:
        then, self._tls_then = self._tls_then, None
        if then is not None:
            then(reply, now)

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
