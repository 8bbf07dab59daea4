"""IIS / Exchange 2000-2003 SMTP service log, W3C extended format (``#Fields:``).

Columns come from the last ``#Fields:`` directive. Inbound lines have the verb in
``cs-method``, its argument in ``cs-uri-query`` (``+`` for space) and the final
status in ``sc-status``: one line per command, logged when it completed. Outbound
lines are a dialogue: ``cs-username`` is ``OutboundConnectionCommand`` (verb in
``cs-method``) or ``OutboundConnectionResponse`` (reply text in ``cs-uri-query``).

The log has no session id; a session is a client IP (inbound) or a remote server
IP (outbound), ended by QUIT. A DATA line carries the Message-ID (``cs-uri-query``)
and size (``cs-bytes``); one whose status is not a final reply code, or whose
``sc-win32-status`` is a time-out/reset, is a 354 that never got a final reply.
IIS writes the DATA line once the transfer is over; a log configured without the
``sc-status`` column (IIS 7's default SMTP fields) does not say what was answered,
so such a DATA line is read as accepted unless ``sc-win32-status`` names a time-out
or a reset. A new header block (``#Software:``/``#Fields:`` after rows) is the
service starting again: every session still open ended with the old process. IIS
logs one line of each outbound response (the first of a multi-line
one), so every ``OutboundConnectionResponse`` is a complete reply.
"""

from __future__ import annotations

from collections.abc import Iterator

from smtpguard.core.grammar import ReplyLine, ascii_number, parse_command, parse_reply_line

from .. import rules
from ..model import ClientCommand, Connect, DataSize, Disconnect, Event, ServerReply, Side
from ..timefmt import parse_iso
from .base import Context, Lines

NAME = "iis"
OUT_COMMAND = "OutboundConnectionCommand"
OUT_RESPONSE = "OutboundConnectionResponse"
# Winsock/Win32 codes for "timed out" or "connection reset/aborted" on the DATA line.
_TIMEOUT_WIN32 = frozenset({"121", "1460", "10053", "10054", "10060", "64"})


def sniff(lines: list[bytes]) -> int:
    for raw in lines:
        if raw.startswith(b"#Fields:") and b"cs-method" in raw and b"," not in raw:
            return 50
    return 0


def _plus(value: str) -> str:
    return "" if value == "-" else value.replace("+", " ").strip()


def parse(lines: Lines, ctx: Context) -> Iterator[Event]:
    stats = ctx.stats
    fields: list[str] = []
    open_in: dict[str, bool] = {}  # client ips with an open session
    open_out: dict[str, bool] = {}  # remote ip → QUIT sent
    time = None
    for no, raw in lines:
        text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        if text.startswith("#"):
            if text.startswith(("#Software:", "#Fields:")):  # a (re)start: see docstring
                for ip in open_in:
                    yield Disconnect(no, time, f"in:{ip}")
                for ip in open_out:
                    yield Disconnect(no, time, f"out:{ip}")
                open_in.clear()
                open_out.clear()
            if text.startswith("#Fields:"):
                fields = text[len("#Fields:") :].split()
            continue
        if not text.strip():
            continue
        values = text.split(" ")
        if not fields or len(values) < len(fields) - 1:
            stats.unknown += 1
            continue
        row = dict(zip(fields, values, strict=False))
        time = parse_iso(f"{row.get('date', '')}T{row.get('time', '')}") if "date" in row else None
        ip = row.get("c-ip", "-")
        user = row.get("cs-username", "-")
        method = row.get("cs-method", "-")
        query = _plus(row.get("cs-uri-query", "-"))
        if user == OUT_RESPONSE:
            sid = f"out:{ip}"
            reply = parse_reply_line(query.encode("utf-8", "surrogateescape"))
            if reply is None:
                stats.unknown += 1
                continue
            reply = ReplyLine(reply.code, True, reply.text)  # see the module docstring
            if ip not in open_out or (reply.code == 220 and open_out[ip]):
                if ip in open_out:
                    yield Disconnect(no, time, sid)
                yield Connect(no, time, sid, ip, Side.SENDING)
                open_out[ip] = False
            yield ServerReply(no, time, sid, reply)
            continue
        if user == OUT_COMMAND:
            sid = f"out:{ip}"
            cmd = parse_command(f"{method} {query}".strip().encode("utf-8", "surrogateescape"))
            if cmd is not None:
                if ip not in open_out:
                    yield Connect(no, time, sid, ip, Side.SENDING)
                open_out[ip] = cmd.verb == "QUIT"
                yield ClientCommand(no, time, sid, cmd)
            continue
        cmd = parse_command(f"{method} {query}".strip().encode("utf-8", "surrogateescape"))
        if cmd is None:
            stats.unknown += 1
            continue
        sid = f"in:{ip}"
        if ip not in open_in:
            peer = ip if user in ("-", "") else f"{user} [{ip}]"
            yield Connect(no, time, sid, peer)
            open_in[ip] = True
        yield ClientCommand(no, time, sid, cmd)
        status = row.get("sc-status")
        win32 = row.get("sc-win32-status", "0")
        if status is None:  # no such column: the outcome is not logged (docstring)
            status = "250" if cmd.verb == "DATA" and win32 not in _TIMEOUT_WIN32 else "-"
        code = max(ascii_number(status), 0)
        if cmd.verb == "DATA":
            yield ServerReply(no, time, sid, ReplyLine(354, True, ""))
            size = row.get("cs-bytes", "-")
            if (octets := ascii_number(size)) >= 0:
                yield DataSize(no, time, sid, octets, rules.angle_id(query))
            if 200 <= code < 600 and code != 354 and win32 not in _TIMEOUT_WIN32:
                yield ServerReply(no, time, sid, ReplyLine(code, True, query))
            else:  # the line was written when the session timed out or was reset
                yield Disconnect(no, time, sid)
                del open_in[ip]
            continue
        if 200 <= code < 600:
            yield ServerReply(no, time, sid, ReplyLine(code, True, ""))
        if cmd.verb == "QUIT":
            yield Disconnect(no, time, sid)
            del open_in[ip]
