"""Small fake SMTP servers on loopback, each showing one filter behaviour for real.

A :class:`FakeSmtpServer` runs an asyncio server in its own thread (so the probe can
be driven through the synchronous CLI) and answers like a server behind the filter
described by its :class:`Behaviour`: masked banner, EHLO refused, commands rewritten
to NOOP or XXXX, one command per received segment, end-of-data that is dropped when
it arrives split (CSCds90792), or end-of-data recognised on bare LF / bare CR.
It records the verbs it received and the messages it accepted, so tests can assert
that ``--no-send`` never started DATA.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import threading
from dataclasses import dataclass, field

CLEAN_EHLO = (
    b"250-fake.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
# The seed article's greeting (one line there, wrapped by the article's layout).
SEED_BANNER = (
    b"220 *********0*****************************************************************"
    b"************2*************\r\n"
)
RFC821 = frozenset({"HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"})

# Which end-of-data a server recognises, searched in "\r\n" + data (the 354 reply
# counts as a line start).
EOD_PATTERNS = {
    "strict": re.compile(rb"\r\n\.\r\n"),
    "lf": re.compile(rb"\n\.\r?\n"),  # LF is a line end (Postfix before 3.9 default)
    "cr": re.compile(rb"[\r\n]\.(?:\r\n|\r|\n)"),  # any bare CR or LF is a line end
    "nul": re.compile(rb"\r\n\x00*\.\x00*\r\n"),  # NUL bytes are dropped first
}


@dataclass(frozen=True)
class Behaviour:
    banner: bytes = b"220 fake.test ESMTP ready\r\n"
    ehlo: bytes = CLEAN_EHLO
    # Commands a filter in front lets through; None = no filter.
    allowed: frozenset[str] | None = None
    # What the filter does with other commands: "refuse" (500 Unrecognized command),
    # "noop" (rewritten to NOOP, PIX 6.x), "xxxx" (rewritten to XXXX, PIX 7.x).
    disallowed: str = "refuse"
    split_eod_bug: bool = False
    eod: str = "strict"
    # Only the first command of each received segment is handled (no pipelining).
    lockstep: bool = False
    tls: ssl.SSLContext | None = None
    # TLS from the first byte (port 465 style) with this context.
    implicit_tls: ssl.SSLContext | None = None
    # (user, password) accepted by AUTH PLAIN/LOGIN; MAIL then needs AUTH first.
    auth: tuple[str, str] | None = None
    # MAIL before HELO/EHLO gets 503 (aiosmtpd, Postfix, the built-in mailbox).
    need_hello: bool = False
    # False: EHLO is answered (with ``ehlo``) by something in front that never passes
    # it on, so the server behind has still seen no greeting.
    ehlo_greets: bool = True


@dataclass
class Record:
    verbs: list[str] = field(default_factory=list)
    messages: int = 0
    # "PLAIN"/"LOGIN" per successful AUTH, and whether that session was under TLS.
    logins: list[tuple[str, bool]] = field(default_factory=list)


class _Session:
    """The server side of one connection, fed received segments."""

    def __init__(self, b: Behaviour, record: Record) -> None:
        self.b = b
        self.record = record
        self.commands = bytearray()
        self.data: bytearray | None = None  # not None while receiving message data
        self.boundaries: list[int] = []
        self.search_from = 0
        self.starttls = False
        self.closed = False
        self.tls_active = False
        self.authenticated = False
        self.greeted = False
        self.login_answers: list[str] | None = None  # AUTH LOGIN in progress

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        if self.data is not None:
            chunk = self._feed_data(chunk, out)
        self.commands += chunk
        first = True
        while self.data is None and not self.closed and b"\n" in self.commands:
            line, _, rest = bytes(self.commands).partition(b"\n")
            self.commands = bytearray(rest)
            if self.b.lockstep and not first:
                continue  # dropped, like a lock-step filter that reads one command
            first = False
            out += self._command(line.rstrip(b"\r"))
            if self.data is not None and self.commands:
                leftover = bytes(self.commands)
                self.commands.clear()
                self.commands += self._feed_data(leftover, out)
        return bytes(out)

    def _feed_data(self, chunk: bytes, out: bytearray) -> bytes:
        assert self.data is not None
        self.data += chunk
        self.boundaries.append(len(self.data))
        view = b"\r\n" + bytes(self.data)
        pattern = EOD_PATTERNS[self.b.eod]
        while True:
            m = pattern.search(view, self.search_from)
            if m is None:
                self.search_from = max(0, len(view) - 4)
                return b""
            start, end = m.start() - 2, m.end() - 2  # back to data offsets
            split = any(start < pos < end for pos in self.boundaries)
            if split and self.b.split_eod_bug:
                self.search_from = m.end()  # the filter never passes it on
                continue
            rest = bytes(self.data[end:])
            self.data = None
            self.boundaries = []
            self.search_from = 0
            self.record.messages += 1
            out += b"250 2.0.0 Ok: queued as %d\r\n" % self.record.messages
            return rest

    def _auth(self, line: bytes) -> bytes:
        """AUTH PLAIN <b64> (RFC 4616) or AUTH LOGIN with two 334 prompts."""
        assert self.b.auth is not None
        user, password = self.b.auth
        if self.login_answers is not None:
            self.login_answers.append(base64.b64decode(line).decode())
            if len(self.login_answers) == 1:
                return b"334 UGFzc3dvcmQ6\r\n"
            ok = self.login_answers == [user, password]
            self.login_answers = None
            return self._authenticated("LOGIN", ok)
        words = line.decode().split()
        if len(words) == 3 and words[1].upper() == "PLAIN":
            ok = base64.b64decode(words[2]) == f"\0{user}\0{password}".encode()
            return self._authenticated("PLAIN", ok)
        if len(words) == 2 and words[1].upper() == "LOGIN":
            self.login_answers = []
            return b"334 VXNlcm5hbWU6\r\n"
        return b"504 5.5.4 Unrecognized authentication type\r\n"

    def _authenticated(self, mechanism: str, ok: bool) -> bytes:
        if not ok:
            return b"535 5.7.8 Authentication credentials invalid\r\n"
        self.authenticated = True
        self.record.logins.append((mechanism, self.tls_active))
        return b"235 2.7.0 Authentication successful\r\n"

    def _command(self, line: bytes) -> bytes:
        if self.login_answers is not None:
            return self._auth(line)
        verb = line.split(b" ", 1)[0].decode("ascii", "replace").upper()
        self.record.verbs.append(verb)
        if self.b.allowed is not None and verb not in self.b.allowed:
            if self.b.disallowed == "refuse":
                return b"500 Unrecognized command\r\n"
            verb = "NOOP" if self.b.disallowed == "noop" else "XXXX"
        if self.b.auth is not None:
            if verb == "AUTH":
                return self._auth(line)
            if verb == "MAIL" and not self.authenticated:
                return b"530 5.7.0 Authentication required\r\n"
        return self._server(verb)

    def _server(self, verb: str) -> bytes:
        replies = {
            "HELO": b"250 fake.test\r\n",
            "EHLO": self.b.ehlo,
            "MAIL": b"250 2.1.0 Ok\r\n",
            "RCPT": b"250 2.1.5 Ok\r\n",
            "RSET": b"250 2.0.0 Ok\r\n",
            "NOOP": b"250 OK\r\n",
            "VRFY": b"252 2.0.0 Cannot VRFY user\r\n",
            "HELP": b"214 2.0.0 See RFC 5321\r\n",
            "": b"500 5.5.2 Error: bad syntax\r\n",
        }
        if verb == "HELO" or (verb == "EHLO" and self.b.ehlo_greets):
            self.greeted = True
        if verb == "MAIL" and self.b.need_hello and not self.greeted:
            return b"503 5.5.1 Error: send HELO/EHLO first\r\n"
        if verb == "DATA":
            self.data = bytearray()
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == "QUIT":
            self.closed = True
            return b"221 2.0.0 Bye\r\n"
        if verb == "STARTTLS" and self.b.tls is not None:
            self.starttls = True
            return b"220 2.0.0 Ready to start TLS\r\n"
        if verb == "XXXX":
            return b"500 5.3.3 Unrecognized command 'XXXX'\r\n"
        return replies.get(verb, b"502 5.5.2 Error: command not recognized\r\n")


class FakeSmtpServer:
    """Context manager: ``with FakeSmtpServer(Behaviour()) as (host, port): ...``."""

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1") -> None:
        self.behaviour = behaviour
        self.host = host
        self.port = 0
        self.record = Record()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> tuple[str, int]:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake SMTP server did not start")
        return self.host, self.port

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, 0, ssl=self.behaviour.implicit_tls)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self.behaviour, self.record)
        session.tls_active = self.behaviour.implicit_tls is not None
        try:
            writer.write(self.behaviour.banner)
            while not session.closed:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                writer.write(session.feed(chunk))
                await writer.drain()
                if session.starttls:
                    assert self.behaviour.tls is not None
                    await writer.start_tls(self.behaviour.tls)
                    session = _Session(self.behaviour, self.record)
                    session.tls_active = True
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
