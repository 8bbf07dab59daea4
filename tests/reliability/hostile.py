"""A scripted hostile upstream and client for the fault campaign (asyncio, loopback).

The upstream answers like a plain SMTP server unless told to fail at one point of a
session, by closing or by resetting (RST): at connect, mid-greeting, on receiving a
given command, part-way through the message, after the end of data before its reply,
or after that reply. The client fails the same way at the same points. Both record
every 2xx they send or get, so a test can check the gateway never invented one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

UPSTREAM_POINTS = (
    "connect",
    "greeting",
    "HELO",
    "MAIL",
    "RCPT",
    "DATA",
    "mid-data",
    "after-dot",
    "after-reply",
)
CLIENT_POINTS = ("connect", "HELO", "MAIL", "RCPT", "DATA", "mid-data", "after-dot", "after-reply")
HOW = ("close", "reset")
BODY = b"Subject: fault\r\n\r\n" + b"x" * 70 + b"\r\n"
BODY_LINES = 3000  # ~220 KB: "mid-data" happens while the message streams


def kill(writer: asyncio.StreamWriter, how: str) -> None:
    if how == "reset":
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


@dataclass
class HostileUpstream:
    fault: tuple[str, str] | None = None  # (point, how) for the next connections
    sent_2xx: Counter[str] = field(default_factory=Counter)  # verb -> 2xx replies sent
    server: asyncio.base_events.Server | None = None
    port: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self.handlers):
            t.cancel()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.handlers.discard(task)
            writer.transport.abort()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        point, how = self.fault or ("", "")
        if point == "connect":
            return kill(writer, how)
        if point == "greeting":
            writer.write(b"220-mx.example ESMTP\r\n")
            await writer.drain()
            return kill(writer, how)
        writer.write(b"220 mx.example ESMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].decode("ascii", "replace").upper()
            if verb == point:
                return kill(writer, how)
            if verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                buf = bytearray()
                while not buf.endswith(b"\r\n.\r\n"):
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if point == "mid-data" and len(buf) > 60_000:
                        return kill(writer, how)
                if point == "after-dot":
                    return kill(writer, how)
                self.sent_2xx["."] += 1
                writer.write(b"250 2.0.0 queued\r\n")
                await writer.drain()
                if point == "after-reply":
                    return kill(writer, how)
                continue
            if verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return writer.close()
            self.sent_2xx[verb] += 1
            writer.write(b"250 ok\r\n")
            await writer.drain()


@dataclass
class ClientResult:
    got_2xx: Counter[str] = field(default_factory=Counter)
    replies: list[bytes] = field(default_factory=list)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while True:
        line = await reader.readline()
        out += line
        if not line or (len(line) >= 4 and line[3:4] != b"-"):
            return out


async def hostile_client(port: int, fault: tuple[str, str] | None) -> ClientResult:
    """One session through the gateway, failing at ``fault`` (point, how) if given."""
    point, how = fault or ("", "")
    res = ClientResult()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if point == "connect":
            return res
        greeting = await _reply(reader)
        res.replies.append(greeting)
        if not greeting.startswith(b"220"):
            return res
        for verb, line in (
            ("HELO", b"HELO client.example\r\n"),
            ("MAIL", b"MAIL FROM:<a@example.org>\r\n"),
            ("RCPT", b"RCPT TO:<b@example.net>\r\n"),
            ("DATA", b"DATA\r\n"),
        ):
            writer.write(line)
            if point == verb:
                return res
            r = await _reply(reader)
            res.replies.append(r)
            if r.startswith(b"2"):
                res.got_2xx[verb] += 1
            if not r.startswith(b"3" if verb == "DATA" else b"2"):
                return res
        for i in range(BODY_LINES):
            writer.write(BODY)
            if i % 200 == 0:
                await writer.drain()
            if point == "mid-data" and i == BODY_LINES // 2:
                return res
        writer.write(b".\r\n")
        if point == "after-dot":
            return res
        r = await _reply(reader)
        res.replies.append(r)
        if r.startswith(b"2"):
            res.got_2xx["."] += 1
        if point == "after-reply":
            return res
        writer.write(b"QUIT\r\n")
        res.replies.append(await _reply(reader))
        return res
    except ConnectionError:
        return res
    finally:
        kill(writer, how or "close")
