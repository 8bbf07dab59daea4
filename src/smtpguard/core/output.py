"""The actions one event produces, collected in order, with the protocol-log traces
that go with them: only those the session's protocol log writes (``TRACE_*`` in
:mod:`smtpguard.core.actions`). A session without a protocol log builds no trace at
all, and one logging in the IMS layout, which shows only the client's side, builds
none of the server's: about half of a session's traces, each a decoded line."""

from __future__ import annotations

from smtpguard.core.actions import (
    TRACE_ALL,
    TRACE_CLIENT,
    TRACE_SERVER,
    TRACE_SIZE,
    Action,
    Direction,
    PolicyEvent,
    ToClient,
    ToServer,
    Trace,
)
from smtpguard.core.grammar import leading_code


class Output:
    """``trace``: a ``TRACE_*`` mask, or a bool (True: every entry)."""

    __slots__ = ("actions", "client", "mask", "server", "size")

    def __init__(self, trace: bool | int) -> None:
        mask = TRACE_ALL if trace is True else int(trace)
        self.mask = mask
        self.client = bool(mask & TRACE_CLIENT)  # client>gw and gw>client lines
        self.server = bool(mask & TRACE_SERVER)  # gw>server and server>gw lines
        self.size = bool(mask & TRACE_SIZE)  # message sizes
        self.actions: list[Action] = []

    def emit(self, action: Action) -> None:
        self.actions.append(action)

    def emit_any(self, action: Action | None) -> None:
        """``action``, if there is one (a part's answer may be "nothing to send")."""
        if action is not None:
            self.actions.append(action)

    def to_client(self, raw: bytes) -> None:
        self.actions.append(ToClient(raw))
        if self.client:
            self.trace_reply(Direction.GW_TO_CLIENT, raw)

    def to_server(self, line: bytes, verb: str) -> None:
        self.actions.append(ToServer(line))
        if self.server:
            text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            shown = "AUTH ..." if verb == "AUTH" else text  # never credentials
            self.actions.append(Trace(Direction.GW_TO_SERVER, shown, verb=verb))

    def trace_reply(self, direction: Direction, raw: bytes) -> None:
        """Trace each line of a reply (the caller checks that its side is traced); a
        line's code is its three leading ASCII digits (``str.isdigit`` would also take
        other scripts' digits)."""
        for line in raw.splitlines():
            code = leading_code(line)
            text = line.decode("utf-8", "surrogateescape")
            self.actions.append(Trace(direction, text, code=code if code >= 0 else None))

    def event(self, event_id: str, message: str, action: str = "log") -> None:
        """A policy event; ``action`` is a :class:`~smtpguard.core.policy.Verdict` value
        or ``"mask"``."""
        self.actions.append(PolicyEvent(event_id, message, action))
