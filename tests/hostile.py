"""Deliberately broken SMTP servers on loopback, for end-to-end tests of the gateway.

:class:`LenientServer` is the server every smuggling attack hopes for: it frames
commands on a bare LF or a bare CR as well as on CRLF, drops NULs, and ends message
data at a lone dot between *any* two line breaks. It executes whatever follows as
commands and records every transaction, so a test can see exactly what was smuggled.
With ``early_reply`` it also answers inside the message data, as a broken (or
hostile) server does, to test the gateway's desync handling.

Each server runs its own thread with a blocking accept loop; one connection at a time
is enough for these tests.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field

from tests.peers import LOOPBACK

_LINE = re.compile(rb"\r\n|\r|\n")
_LENIENT_END = re.compile(rb"(?:^|(?<=[\r\n]))\.(?:\r\n|\r|\n)")


@dataclass
class Transaction:
    mail_from: bytes
    rcpt_to: list[bytes]
    data: bytes


@dataclass
class LenientServer:
    early_reply: bytes = b""  # sent as soon as message data starts to arrive
    transactions: list[Transaction] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def mail_froms(self) -> list[bytes]:
        with self._lock:
            return [t.mail_from for t in self.transactions]

    # -- the server ------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        mail: bytes | None = None
        rcpts: list[bytes] = []
        in_data = False
        warned = False
        try:
            conn.sendall(b"220 lenient.example ESMTP\r\n")
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk.replace(b"\x00", b"")
                while True:
                    if in_data:
                        if self.early_reply and not warned:
                            warned = True
                            conn.sendall(self.early_reply)
                        m = _LENIENT_END.search(buf)
                        if m is None:
                            break
                        with self._lock:
                            self.transactions.append(
                                Transaction(mail or b"", list(rcpts), buf[: m.start()])
                            )
                        buf = buf[m.end() :]
                        in_data, mail, rcpts = False, None, []
                        conn.sendall(b"250 2.0.0 queued\r\n")
                        continue
                    m = _LINE.search(buf)
                    if m is None:
                        break
                    line, buf = buf[: m.start()], buf[m.end() :]
                    with self._lock:
                        self.commands.append(line)
                    verb = line[:4].upper()
                    if verb in (b"HELO", b"EHLO"):
                        conn.sendall(b"250 lenient.example\r\n")
                    elif verb == b"MAIL":
                        mail, rcpts = line, []
                        conn.sendall(b"250 2.1.0 ok\r\n")
                    elif verb == b"RCPT":
                        rcpts.append(line)
                        conn.sendall(b"250 2.1.5 ok\r\n")
                    elif verb == b"DATA":
                        in_data, warned = True, False
                        conn.sendall(b"354 go ahead\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 2.0.0 bye\r\n")
                        return
                    else:
                        conn.sendall(b"250 2.0.0 ok\r\n")
        except OSError:
            return
        finally:
            conn.close()
