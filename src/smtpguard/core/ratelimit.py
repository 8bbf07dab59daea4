"""Shared rate limits in the session (docs/design.md#shared-state): what a ``rate-limit`` finding
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

import enum
import hashlib
import ipaddress
from collections import deque

from smtpguard.core.actions import RateCheck
from smtpguard.core.checks import Finding
from smtpguard.core.dedupe import fold_address
from smtpguard.core.pipeline import Slot

# Checks that measure the sender address: counted per sender, not per client.
PER_SENDER = frozenset({"sender_length", "sender_pattern"})

# What a queued count is for.
COMMAND = 0  # a MAIL/RCPT held: forwarded or refused on the answer
AFTER = 1  # decided on a server reply (invalid_recipients): later RCPTs blocked
MESSAGE = 2  # the final dot held: released or the message refused


class Decision(enum.Enum):
    """What a count's answer decides (the session applies it)."""

    FORWARD = "forward the held command"
    REFUSE = "refuse the held command with the finding's reply"
    BLOCK = "refuse every later RCPT"
    RELEASE = "release the held dot"
    REFUSE_MESSAGE = "refuse the message with the finding's reply"
    NOTHING = "nothing more (logged at most)"


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


class Count:
    """One queued count: the finding, its key, and what waits for it; once answered,
    ``allowed`` and the ``decision``."""

    __slots__ = (
        "allowed", "decision", "finding", "held", "key", "kind", "line", "params", "slot", "verb"
    )  # fmt: skip

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
        self.allowed: bool | None = None
        self.decision = Decision.NOTHING
        self.held = b""  # RELEASE: the terminator's last octets


class SharedRates:
    """The counts one session waits for, at most one asked at a time. Fed the
    findings and the driver's answers; returns the ``RateCheck`` to send and, for
    each answer, the :class:`Count` with its :class:`Decision`. ``peer``: the
    client's address, the key of most checks."""

    __slots__ = ("_client", "_peer", "_queue", "held")

    def __init__(self, peer: tuple[str, int] | None) -> None:
        self._peer = peer
        self._queue: deque[Count] = deque()
        self._client: str | None = None
        self.held = b""  # the last octets of a held terminator

    @property
    def waiting(self) -> bool:
        """Counts are queued (the first one asked)."""
        return bool(self._queue)

    def key(self, f: Finding, sender: str | None = None) -> str:
        if sender is not None and f.check in PER_SENDER:
            return f"{f.check}:{sender_key(sender)}"
        if self._client is None:
            self._client = client_key(self._peer)
        return f"{f.check}:{self._client}"

    # -- what waits ---------------------------------------------------------------
    def hold_command(
        self, f: Finding, slot: Slot, verb: str, line: bytes, params: str, sender: str | None
    ) -> RateCheck | None:
        """A MAIL/RCPT finding: the command waits, in ``slot``, its place in the reply
        order. The check to send now, if it is the first queued."""
        return self._add(Count(COMMAND, f, self.key(f, sender), slot, verb, line, params))

    def count_after(self, f: Finding) -> RateCheck | None:
        """A finding on a server reply: between commands, the client's next ones wait."""
        return self._add(Count(AFTER, f, self.key(f)))

    def hold_dot(self, data: bytes | memoryview) -> bytes | memoryview:
        """Of a message's last bytes, what to relay now: all but the end of its
        terminator (at most ``.CRLF``, at least the final LF), held until the counts
        are answered."""
        keep = min(len(data), 3)
        self.held = bytes(data[len(data) - keep :])
        return data[: len(data) - keep]

    def hold_message(self, slot: Slot, findings: list[Finding]) -> RateCheck | None:
        """At the client's end of data: the final dot waits for the counts."""
        ask = None
        for f in findings:
            ask = self._add(Count(MESSAGE, f, self.key(f), slot)) or ask
        return ask

    def _add(self, count: Count) -> RateCheck | None:
        self._queue.append(count)
        return self.next_check() if len(self._queue) == 1 else None

    def next_check(self) -> RateCheck | None:
        """The check to ask for the first queued count, if any."""
        if not self._queue:
            return None
        count = self._queue[0]
        f = count.finding
        return RateCheck(f.check, count.key, f.rate, f.period)

    def clear(self) -> None:
        """The session is closing: no answer matters any more."""
        self._queue.clear()

    # -- the answer -----------------------------------------------------------------
    def answer(self, allowed: bool | None) -> Count | None:
        """The driver's count for the first queued finding: that count, with what it
        decides (None: nothing was queued)."""
        queue = self._queue
        if not queue:
            return None
        count = queue.popleft()
        count.allowed = allowed
        kind = count.kind
        if kind == COMMAND:
            count.decision = Decision.REFUSE if allowed is False else Decision.FORWARD
        elif kind == AFTER:
            count.decision = Decision.BLOCK if allowed is False else Decision.NOTHING
        elif allowed is False:
            while queue and queue[0].kind == MESSAGE:  # the same message's other counts
                queue.popleft()
            self.held = b""
            count.decision = Decision.REFUSE_MESSAGE
        elif not queue or queue[0].kind != MESSAGE:
            count.held, self.held = self.held, b""
            count.decision = Decision.RELEASE
        return count
