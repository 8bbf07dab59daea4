"""The actions one event produces, collected in order, with the protocol-log traces
that go with them (only when tracing is on: a session without a protocol log builds
no trace at all)."""

from __future__ import annotations

from smtpguard.core.actions import Action, Direction, PolicyEvent, ToClient, ToServer, Trace


class Output:
    __slots__ = ("actions", "trace")

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.actions: list[Action] = []

    def emit(self, action: Action) -> None:
        self.actions.append(action)

    def to_client(self, raw: bytes) -> None:
        self.actions.append(ToClient(raw))
        if self.trace:
            self.trace_reply(Direction.GW_TO_CLIENT, raw)

    def to_server(self, line: bytes, verb: str) -> None:
        self.actions.append(ToServer(line))
        if self.trace:
            text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            shown = "AUTH ..." if verb == "AUTH" else text  # never credentials
            self.actions.append(Trace(Direction.GW_TO_SERVER, shown, verb=verb))

    def trace_reply(self, direction: Direction, raw: bytes) -> None:
        if not self.trace:
            return
        for line in raw.splitlines():
            text = line.decode("utf-8", "surrogateescape")
            code = int(text[:3]) if text[:3].isdigit() else None
            self.actions.append(Trace(direction, text, code=code))

    def event(self, event_id: str, message: str, action: str = "log") -> None:
        """A policy event; ``action`` is a :class:`~smtpguard.core.policy.Verdict` value
        or ``"mask"``."""
        self.actions.append(PolicyEvent(event_id, message, action))
