"""Shared rate limits in the session (DESIGN §3.7): what a ``rate-limit`` finding
waits for when it is counted across every worker and instance.

Theory of operation: without ``Policy.shared_rates`` a ``rate-limit`` finding is
counted in the session (:class:`~smtpguard.core.checks.Rates`). With it (the gateway
sets it when it has a shared store) the session emits
:class:`~smtpguard.core.actions.RateCheck` and what the finding concerns waits for
:class:`~smtpguard.core.events.RateAnswer`: within the rate, the finding is logged
and the command or message goes on; over it, it is refused with the check's reply;
``None`` (the store failed) lets it through, logged (limits fail open).

What a check counts per (the key): ``sender_length`` and ``sender_pattern`` measure
the MAIL FROM address and count per sender address (the domain folded to lower
case, hashed: no address is stored); every other check counts per client address
(IPv4-mapped IPv6 folded to IPv4). The window is fixed: it starts with the first
event and lasts ``period`` seconds.

Where it waits, keeping replies in order:

- **MAIL/RCPT** (``hold_command``): the command is not forwarded; its reply slot is
  taken at once, and the phase ``RATE`` stops the client's later (pipelined)
  commands from being read until the answer, so nothing overtakes it;
- **invalid_recipients** (``count_after``, decided on the server's 5xx to a RCPT
  that was relayed): between commands the client's next commands wait too, so a
  block applies to the same RCPTs whatever the store's latency;
- **content checks** (``hold_message``): collected while the message streams; at
  the client's end of data the last octets of the terminator are held (as for a
  duplicate lookup) for one count per finding, one after the other (typically
  one). Over the limit, the message is refused with the finding's reply and its
  upstream connection aborted without the terminator; else the dot is released
  (to the duplicate lookup first, when ``[dedupe]`` is on).

At most one ``RateCheck`` is outstanding per session; others queue behind it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import deque
from typing import TYPE_CHECKING

from smtpguard.core import replies
from smtpguard.core.actions import RateCheck, ToServer
from smtpguard.core.checks import Finding
from smtpguard.core.dedupe import fold_address
from smtpguard.core.phases import Phase, Trigger, Upstream
from smtpguard.core.pipeline import Slot

if TYPE_CHECKING:
    from smtpguard.core.session import Session

# Checks that measure the sender address: counted per sender, not per client.
PER_SENDER = frozenset({"sender_length", "sender_pattern"})

# What a queued count is for.
COMMAND = 0  # a MAIL/RCPT held: forwarded or refused on the answer
AFTER = 1  # decided on a server reply (invalid_recipients): later RCPTs blocked
MESSAGE = 2  # the final dot held: released or the message refused


def client_key(peer: tuple[str, int] | None) -> str:
    """``client:ADDRESS`` for the session's client (``client:-`` when not an IP)."""
    if peer is None:
        return "client:-"
    text = peer[0]
    try:
        ip = ipaddress.ip_address(text.strip("[]").partition("%")[0])
    except ValueError:
        return "client:" + text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "client:" + str(ip.ipv4_mapped)
    return "client:" + str(ip)


def sender_key(sender: str) -> str:
    """``sender:HASH``: the MAIL FROM address, domain folded, as 32 hex digits."""
    folded = fold_address(sender).encode("utf-8", "surrogateescape")
    return "sender:" + hashlib.sha256(folded).hexdigest()[:32]


class _Count:
    """One queued count: the finding, its key, and what waits for it."""

    __slots__ = ("finding", "key", "kind", "line", "params", "slot", "verb")

    def __init__(
        self,
        kind: int,
        finding: Finding,
        key: str,
        slot: Slot | None = None,
        verb: str = "",
        line: bytes = b"",
        params: str = "",
    ) -> None:
        self.kind = kind
        self.finding = finding
        self.key = key
        self.slot = slot
        self.verb = verb
        self.line = line
        self.params = params


class SharedRates:
    __slots__ = ("_client", "_queue", "_s", "held")
    __deletable__ = ("_s",)  # detach(): a closed session is freed without the cycle collector

    def __init__(self, session: Session) -> None:
        self._s = session
        self._queue: deque[_Count] = deque()
        self._client: str | None = None
        self.held = b""  # the last octets of a held terminator

    def detach(self) -> None:
        """The session has closed: drop the reference back to it."""
        del self._s

    def key(self, f: Finding, sender: str | None = None) -> str:
        if sender is not None and f.check in PER_SENDER:
            return f"{f.check}:{sender_key(sender)}"
        if self._client is None:
            self._client = client_key(self._s.link.peer)
        return f"{f.check}:{self._client}"

    # -- what waits ---------------------------------------------------------------
    def hold_command(
        self, f: Finding, verb: str, line: bytes, params: str, sender: str | None
    ) -> None:
        """A MAIL/RCPT finding: the command waits, in its place in the reply order."""
        s = self._s
        slot = s.replies.pending(verb)
        s.goto(Trigger.RATE_HOLD)
        self._add(_Count(COMMAND, f, self.key(f, sender), slot, verb, line, params))

    def count_after(self, f: Finding) -> None:
        """A finding on a server reply: between commands, the client's next ones wait."""
        s = self._s
        if s.phase is Phase.COMMAND:
            s.goto(Trigger.RATE_HOLD)
        self._add(_Count(AFTER, f, self.key(f)))

    def hold_dot(self, data: bytes | memoryview) -> None:
        """Relay a message's last bytes but the end of its terminator (at most
        ``.CRLF``, at least the final LF), held until the counts are answered."""
        keep = min(len(data), 3)
        self.held = bytes(data[len(data) - keep :])
        if len(data) > keep:
            self._s.out.emit(ToServer(data[: len(data) - keep]))

    def hold_message(self, slot: Slot, findings: list[Finding]) -> None:
        """At the client's end of data: the final dot waits for the counts."""
        self._s.goto(Trigger.RATE_HOLD)
        for f in findings:
            self._add(_Count(MESSAGE, f, self.key(f), slot))

    def _add(self, count: _Count) -> None:
        self._queue.append(count)
        if len(self._queue) == 1:
            self._ask(count)

    def _ask(self, count: _Count) -> None:
        f = count.finding
        self._s.out.emit(RateCheck(f.check, count.key, f.rate, f.period))

    # -- the answer -----------------------------------------------------------------
    def answer(self, allowed: bool | None, now: float) -> None:
        """The driver's count for the first queued finding."""
        queue = self._queue
        if not queue:
            return
        count = queue.popleft()
        s = self._s
        if s.closing:
            queue.clear()
            return
        f = count.finding
        if not queue and s.phase is Phase.RATE:
            s.goto(Trigger.RATE_ANSWER)
        if allowed is None:
            s.out.event(f.event_id, f.message + " (rate not counted: store unavailable)", "log")
        elif allowed:
            s.out.event(f.event_id, f.message, "log")
        if count.kind == COMMAND:
            self._command(count, allowed is not False, now)
        elif count.kind == AFTER:
            if allowed is False:
                s.out.event(f.event_id, f.message, "reject")
                s.commands_refused += 1
                s.envelope.rcpt_blocked = True
        elif allowed is False:
            self._refuse_message(count, now)
        elif not queue or queue[0].kind != MESSAGE:
            self._release_dot(count, now)
        if queue:
            self._ask(queue[0])

    def _command(self, count: _Count, allowed: bool, now: float) -> None:
        s = self._s
        slot = count.slot
        assert slot is not None
        verb = count.verb
        f = count.finding
        if not allowed:
            s.out.event(f.event_id, f.message, "reject")
            s.commands_refused += 1
            self._fill(slot, verb, f.reply)
        elif s.link.state is not Upstream.READY:
            # The server was lost meanwhile: as for a command already relayed.
            s.abort_with(replies.UPSTREAM_LOST)
        elif not s.cmds.params_refused(verb, count.params, slot):
            s.cmds.forward(verb, count.line, now, slot)

    def _fill(self, slot: Slot, verb: str, reply: bytes) -> None:
        s = self._s
        s.count(verb, "refused")
        slot.reply = reply
        s.flush()

    def _refuse_message(self, count: _Count, now: float) -> None:
        """Over the limit at the end of data: the server never sees the terminator."""
        s = self._s
        f = count.finding
        slot = count.slot
        assert slot is not None
        queue = self._queue
        while queue and queue[0].kind == MESSAGE:  # the same message's other counts
            queue.popleft()
        if not queue and s.phase is Phase.RATE:
            s.goto(Trigger.RATE_ANSWER)
        self.held = b""
        if slot.reply is not None or s.link.state is not Upstream.READY:
            return  # the server was lost meanwhile: the client has its 4xx
        s.out.event(f.event_id, f.message + ": message refused", "reject")
        s.messages_refused += 1
        s.envelope.in_transaction = False
        slot.reply = f.reply
        s.flush()
        s.link.reconnect(now)

    def _release_dot(self, count: _Count, now: float) -> None:
        s = self._s
        slot = count.slot
        assert slot is not None
        held, self.held = self.held, b""
        if slot.reply is not None or s.link.state is not Upstream.READY:
            return
        s.deadlines.server = now + s.policy.timeouts.data_end
        duplicates = s.duplicates
        if duplicates is not None and s.phase is Phase.COMMAND:
            duplicates.tracker.held = held  # the lookup holds (or sends) it now
            if s.dedupe_lookup(slot):
                return
        elif held:
            s.out.emit(ToServer(held))
        s.replies.expect(slot)
