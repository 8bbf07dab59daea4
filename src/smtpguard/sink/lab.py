"""The mailbox with a protocol log, and as an Exchange 5.5 IMS for labs.

Theory of operation: :class:`LabSMTP` is aiosmtpd's ``SMTP`` with two additions.

* A protocol log in the Exchange IMS layout (:class:`smtpguard.logs.ImsLog`, the
  layout ``smtpguard logscan`` reads): the connection, each command line as the
  client sent it (``<<<``), each reply line (``>>>``), and a closing entry. Message
  content is never logged. Command lines are taken where aiosmtpd reads them, from
  its stream reader, which :class:`_LoggedReader` wraps; data lines are not logged
  (the 354 reply switches the wrapper off until the next reply). Each message
  stored gets one entry, ``message data: N bytes, Message-ID <id>`` (the ID read
  as the gateway reads it, :mod:`smtpguard.core.message`), so that logscan tells
  the copies of one message from other messages between the same two people.
* ``ims`` emulation, the half of the seed story that happened on the receiving
  server: Exchange 5.5's Internet Mail Service, when the connection went quiet
  (or was dropped) in the middle of DATA, delivered the data it had received so
  far as a message. Behind a PIX that swallowed a split ``CRLF.CRLF``, every
  attempt of the sender became one more copy in the recipient's mailbox, while the
  sender never saw a final reply and tried again. Here the DATA phase has its own
  idle timeout, restarted by every byte that arrives; when it runs out, or when the
  peer closes or resets the connection inside DATA, the complete lines received so
  far are delivered once, the log says so, and the connection is closed without a
  reply.

Not reproduced: bytes after the last CRLF of an interrupted DATA (a line cut in
the middle) are not delivered; IMS's other timeouts and its queueing are not
modelled (the general idle timeout outside DATA is aiosmtpd's).

This leans on aiosmtpd 1.4 internals that have no public hook: the stream reader
(``_reader``), the idle timer (``_reset_timeout`` / ``_timeout_cb``) and the DATA
loop, which :meth:`LabSMTP.smtp_DATA` re-implements for ``ims`` (the stock loop
keeps the partial message in a local variable and drops it when cancelled).
``tests/test_sink_ims.py`` pins the behaviour.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from aiosmtpd.smtp import SMTP

from smtpguard.core.actions import Direction, Trace
from smtpguard.core.message import MessageInspector
from smtpguard.core.policy import Policy
from smtpguard.logs import ImsLog

EMULATIONS = ("ims",)
# How long IMS waits for the next byte of message data by default: the server's
# timeout of RFC 5321 §4.5.3.2.7 (5 minutes).
DEFAULT_DATA_TIMEOUT = 300.0
DATA_REPLY = "354 End data with <CR><LF>.<CR><LF>"
END_OF_DATA_LINE = b".\r\n"  # RFC 5321 §4.1.1.4, after a CRLF
# aiosmtpd's stream limit: a data line longer than this is drained unrecorded.
LINE_LENGTH_LIMIT = 1001  # RFC 5321 §4.5.3.1.6

log = logging.getLogger("smtpguard.sink")
_CHECKS = Policy().checks  # none on: the inspector only reads the Message-ID


def message_note(content: bytes) -> str:
    """The log entry for one stored message (dot-unstuffed content): its size and
    Message-ID, which logscan's ``ims`` reader takes (``formats/ims.py``)."""
    inspector = MessageInspector(_CHECKS, want_id=True)
    inspector.feed(content if content.endswith(b"\n") else content + b"\r\n")
    inspector.feed(b"\r\n")  # a message that is all header: its end
    # One log entry: a control character (a bare CR or LF inside the field) is shown
    # as "?", never written into the log as is.
    mid = "".join(c if c.isprintable() else "?" for c in inspector.message_id)
    return f"message data: {len(content)} bytes" + (f", Message-ID <{mid}>" if mid else "")


_session_ids = itertools.count(1)


class _LoggedReader:
    """aiosmtpd's stream reader, with each command line it returns logged."""

    def __init__(self, inner: asyncio.StreamReader, owner: LabSMTP) -> None:
        self._inner = inner
        self._owner = owner

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await self._inner.readuntil(separator)
        self._owner.client_line(line)
        return line

    async def readline(self) -> bytes:
        line = await self._inner.readline()
        self._owner.client_line(line)
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LabSMTP(SMTP):
    """aiosmtpd's SMTP server with a protocol log and, optionally, IMS's DATA timeout."""

    def __init__(
        self,
        handler: Any,
        *,
        protocol_log: ImsLog | None = None,
        emulate: str | None = None,
        data_timeout: float = DEFAULT_DATA_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.protocol_log = protocol_log
        self.emulate = emulate
        self.data_timeout = data_timeout
        self.sid = f"sink{next(_session_ids)}"
        self._in_data = False  # between our 354 and the next reply: data lines, not logged
        self._data_timed_out = False
        self._lines: list[bytes] = []  # the message so far (ims DATA)
        self._delivered_partial = False

    # --- protocol log -----------------------------------------------------------

    def _note(self, text: str) -> None:
        if self.protocol_log is not None:
            self.protocol_log.note(self.sid, text)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        status = await super()._call_handler_hook(command, *args)
        envelope = self.envelope
        if command == "DATA" and str(status).startswith("250") and envelope is not None:
            self._note(message_note(envelope.original_content or b""))
        return status

    def client_line(self, line: bytes) -> None:
        if self.protocol_log is None or self._in_data or not line:
            return
        text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        self.protocol_log.trace(self.sid, Trace(Direction.CLIENT_TO_GW, text))

    async def push(self, status: Any) -> None:
        text = status.decode("utf-8", "surrogateescape") if isinstance(status, bytes) else status
        self._in_data = text.startswith("354")
        if self.protocol_log is not None:
            self.protocol_log.trace(self.sid, Trace(Direction.GW_TO_CLIENT, text))
        await super().push(status)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.protocol_log is not None:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple):
                host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
                peer = f"{host}:{peer[1]}"
            self.protocol_log.connect(self.sid, str(peer))
            self._reader = _LoggedReader(self._reader, self)  # type: ignore[assignment]

    def connection_lost(self, error: Exception | None) -> None:
        if self.emulate == "ims" and self._in_data and not self._delivered_partial:
            # Delivered here, not in smtp_DATA's cancellation: connection_lost is
            # called once whatever ended the session (timeout, EOF, reset).
            self._deliver_partial(error)
        super().connection_lost(error)
        if self.protocol_log is not None:
            self._note("The connection was closed")
            self.protocol_log.disconnect(self.sid)

    # --- ims: the DATA timeout and the partial delivery ----------------------------

    def data_received(self, data: bytes) -> None:
        if self.emulate == "ims" and self._in_data:
            self._reset_timeout(self.data_timeout)  # "no byte for SECONDS"
        super().data_received(data)

    def _timeout_cb(self) -> None:
        if self._in_data:
            self._data_timed_out = True
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def smtp_DATA(self, arg: str) -> None:
        if self.emulate != "ims":
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        self._lines = []
        await self.push(DATA_REPLY)
        self._reset_timeout(self.data_timeout)
        reader = self._reader._inner if isinstance(self._reader, _LoggedReader) else self._reader
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                await reader.read(exc.consumed)  # an overlong line: drained, not kept
                continue
            if line == END_OF_DATA_LINE:
                break
            self._lines.append(line[1:] if line.startswith(b".") else line)  # RFC 5321 §4.5.2
        content = b"".join(self._lines)
        self._lines = []
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        self._reset_timeout()
        await self.push(status)

    def _deliver_partial(self, error: Exception | None) -> None:
        self._delivered_partial = True
        envelope = self.envelope
        content = b"".join(self._lines)
        self._lines = []
        if self._data_timed_out:
            why = f"no data for {self.data_timeout:g} seconds in DATA"
        elif error is not None:
            why = f"the connection was lost in DATA ({error.__class__.__name__})"
        else:
            why = "the client closed the connection in DATA"
        if envelope is None or not envelope.rcpt_tos:
            self._note(f"{why}: nothing to deliver")
            return
        key = self.event_handler.store(envelope.mail_from, envelope.rcpt_tos, content)
        self._note(message_note(content))
        self._note(
            f"{why}: delivered the {len(content)} bytes received so far as a message "
            f"({key}), as Exchange 5.5 IMS did; no reply was sent"
        )
        log.info("ims: %s: delivered %d bytes as %s", why, len(content), key)
