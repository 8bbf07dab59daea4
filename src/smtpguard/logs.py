"""Protocol log writers: ``ims`` (Exchange 5.5 IMS layout) and ``jsonl``.

``ims`` reproduces the layout of the Exchange IMS protocol log, so an administrator's
existing habits (and ``smtpguard logscan``) work on it::

    2/7/01 5:01:20 PM : A connection was accepted from 192.0.2.7
    2/7/01 5:01:21 PM : <<< HELO mail.domain1.com
    2/7/01 5:01:21 PM : >>> 250 OK

``<<<`` is client to gateway, ``>>>`` gateway to client. ``jsonl`` writes one object
per event with all four directions. Message content is never written, only its size.
Keys of ``jsonl`` objects: ``ts``, ``session``, ``event`` (connect, command, reply,
data, policy, disconnect), ``dir``, ``peer``, ``verb``, ``code``, ``line``, ``size``,
``id``, ``message``, ``action``.

A log opened by path can be re-opened by that path (:meth:`reopen`, on SIGHUP or
SIGUSR1), so a logrotate that renames the file needs no ``copytruncate``: lines
written after the signal go to the new file (``deploy/logrotate``).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import time
from collections.abc import Callable
from typing import IO, Protocol

from smtpguard.core.actions import TRACE_ALL, TRACE_CLIENT, Direction, PolicyEvent, Trace


class ProtocolLogFormat(enum.StrEnum):
    """``protocol_log.format``: Exchange's IMS layout or one JSON object per event."""

    IMS = "ims"
    JSONL = "jsonl"


FORMATS = tuple(ProtocolLogFormat)
# The IMS layout's direction marks (the one vocabulary: logscan reads these back).
IMS_FROM_CLIENT = "<<<"  # client to gateway
IMS_TO_CLIENT = ">>>"  # gateway to client
_FROM_CLIENT = IMS_FROM_CLIENT + " "
_TO_CLIENT = IMS_TO_CLIENT + " "


def ims_time(t: dt.datetime) -> str:
    """``2/7/01 5:01:21 PM``: month/day/2-digit year, 12-hour clock, no zero padding."""
    hour = t.hour % 12 or 12
    return f"{t.month}/{t.day}/{t:%y} {hour}:{t:%M:%S} {'AM' if t.hour < 12 else 'PM'}"


class ProtocolLog(Protocol):
    # Which traces the layout writes (a ``TRACE_*`` mask): sessions build no others.
    @property
    def traced(self) -> int: ...

    def connect(self, sid: str, peer: str) -> None: ...
    def trace(self, sid: str, tr: Trace) -> None: ...
    def policy(self, sid: str, ev: PolicyEvent) -> None: ...
    def disconnect(self, sid: str) -> None: ...
    def flush(self) -> None: ...
    def reopen(self) -> str | None: ...


def _open(path: str) -> IO[str]:
    # Line buffered: one write per line (jsonl) or per session (ims), appended
    # atomically, so worker processes can share the file.
    return open(path, "a", buffering=1, encoding="utf-8", errors="surrogateescape")


class _Writer:
    def __init__(
        self,
        out: IO[str],
        clock: Callable[[], dt.datetime] | None = None,
        path: str | None = None,
    ) -> None:
        self.out = out
        self.clock = clock or (lambda: dt.datetime.now().astimezone())
        self.path = path  # set when opened by path: then it can be re-opened

    def flush(self) -> None:
        self.out.flush()

    def reopen(self) -> str | None:
        """Open the path again and write there from now on; OSError keeps the old file.
        The path re-opened (None: written to a stream, nothing to re-open)."""
        if self.path is None:
            return None
        new = _open(self.path)
        old, self.out = self.out, new
        old.flush()
        old.close()
        return self.path


class ImsLog(_Writer):
    """IMS layout. The layout has no session id, so each session's lines are kept
    together and written in one piece when it ends (or every ``FLUSH_LINES`` lines):
    concurrent sessions and worker processes never interleave inside a session."""

    FLUSH_LINES = 200
    traced = TRACE_CLIENT  # the client's side only: no server lines, no sizes

    def __init__(
        self,
        out: IO[str],
        clock: Callable[[], dt.datetime] | None = None,
        path: str | None = None,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(out, clock, path)
        self._pending: dict[str, list[str]] = {}
        # The layout's time has one-second resolution: with the default clock the
        # "2/7/01 5:01:21 PM : " prefix is built once per second, not per line.
        self._wallclock = wallclock if clock is None else None
        self._second = -1
        self._prefix = ""

    def _stamp(self) -> str:
        """The line prefix: the time as the layout writes it, then ``" : "``."""
        if self._wallclock is None:
            return f"{ims_time(self.clock())} : "
        second = int(self._wallclock())
        if second != self._second:
            local = dt.datetime.fromtimestamp(second).astimezone()
            self._prefix = f"{ims_time(local)} : "
            self._second = second
        return self._prefix

    def _line(self, sid: str, text: str) -> None:
        lines = self._pending.get(sid)
        if lines is None:
            lines = self._pending[sid] = []
        lines.append(f"{self._stamp()}{text}\n")
        if len(lines) >= self.FLUSH_LINES:
            self._write(sid)

    def _write(self, sid: str) -> None:
        lines = self._pending.pop(sid, None)
        if lines:
            self.out.write("".join(lines))
            self.out.flush()

    def connect(self, sid: str, peer: str) -> None:
        host = peer.rsplit(":", 1)[0].strip("[]")
        self._line(sid, f"A connection was accepted from {host}")

    def trace(self, sid: str, tr: Trace) -> None:
        if tr.size is not None:
            return  # the IMS layout has no entry for message data
        direction = tr.direction
        if direction is Direction.CLIENT_TO_GW:
            self._line(sid, _FROM_CLIENT + tr.line)
        elif direction is Direction.GW_TO_CLIENT:
            self._line(sid, _TO_CLIENT + tr.line)

    def policy(self, sid: str, ev: PolicyEvent) -> None:
        pass  # not part of the IMS layout; see the application log or jsonl

    def note(self, sid: str, text: str) -> None:
        """A free-text entry of the session (IMS logged "The connection was closed"
        and its own remarks this way; logscan skips entries it does not know)."""
        self._line(sid, text)

    def disconnect(self, sid: str) -> None:
        self._write(sid)

    def flush(self) -> None:
        for sid in list(self._pending):
            self._write(sid)
        self.out.flush()


class JsonlLog(_Writer):
    traced = TRACE_ALL  # all four directions and the message sizes

    def _obj(self, sid: str, event: str, **fields: object) -> None:
        obj: dict[str, object] = {"ts": self.clock().isoformat(), "session": sid, "event": event}
        obj.update({k: v for k, v in fields.items() if v is not None})
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def connect(self, sid: str, peer: str) -> None:
        self._obj(sid, "connect", peer=peer)

    def trace(self, sid: str, tr: Trace) -> None:
        d = tr.direction.value
        if tr.size is not None:
            self._obj(sid, "data", dir=d, size=tr.size, message_id=tr.line or None)
        elif tr.direction in (Direction.CLIENT_TO_GW, Direction.GW_TO_SERVER):
            self._obj(sid, "command", dir=d, verb=tr.verb, line=tr.line)
        else:
            self._obj(sid, "reply", dir=d, code=tr.code, line=tr.line)

    def policy(self, sid: str, ev: PolicyEvent) -> None:
        self._obj(sid, "policy", id=ev.id, message=ev.message, action=ev.action)

    def disconnect(self, sid: str) -> None:
        self._obj(sid, "disconnect")


def open_protocol_log(path: str, fmt: str) -> ProtocolLog:
    out = _open(path)
    return ImsLog(out, path=path) if fmt == ProtocolLogFormat.IMS else JsonlLog(out, path=path)
