"""Synthetic Postfix maillog for the scale tests and ``bench/logscan_bench.py``.

Realistic line shapes (smtpd, cleanup, qmgr, local), one message every ``step``
seconds; every ``stall_every``-th session times out after DATA and every
``dup_every``-th message is delivered again 30 minutes later, so the scan has real
work to do in the session and duplicate paths.

The generator records what it actually wrote in a :class:`Planted`: a planted item
whose slot was taken by another one, or whose second copy fell past the end of the
output, is not counted. Tests compare a scan against it finding by finding.

Every message, first copy or re-delivery, gets its own short (hex) Postfix queue
id: a re-delivery is a new queue file, and an id outside Postfix's alphabets is not
a queue id at all (an earlier ``R…`` prefix made the parser rightly skip those lines).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import BinaryIO

_MON = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
REDELIVERY_DELAY = timedelta(minutes=30)
# Lines of one message written by _message(); the ``client=`` line is the second.
_CLIENT_LINE = 1


@dataclass(slots=True)
class Planted:
    """What the generator wrote: the ground truth a scan must reproduce."""

    bytes: int = 0
    lines: int = 0
    messages: int = 0  # delivered copies, re-deliveries included
    # Line numbers of the ``timeout after DATA`` lines.
    stalls: list[int] = field(default_factory=list)
    # Message-ID → line numbers of each copy's smtpd ``client=`` line, for the
    # messages that really were written twice.
    duplicates: dict[str, list[int]] = field(default_factory=dict)


def _stamp(t: datetime) -> str:
    return f"{_MON[t.month - 1]} {t.day:2d} {t:%H:%M:%S}"


def _message(t: datetime, n: int, qid: str, msgid: str, pid: int) -> list[str]:
    s = _stamp(t)
    peer = f"mail{n % 5000}.sender{n % 997}.example[198.51.{n % 250}.{n % 199 + 1}]"
    size = 1000 + (n * 7919) % 90000
    return [
        f"{s} mx1 postfix/smtpd[{pid}]: connect from {peer}\n",
        f"{s} mx1 postfix/smtpd[{pid}]: {qid}: client={peer}\n",
        f"{s} mx1 postfix/cleanup[{pid + 1}]: {qid}: message-id=<{msgid}>\n",
        f"{s} mx1 postfix/qmgr[880]: {qid}: from=<user{n % 20000}@sender{n % 997}.example>, "
        f"size={size}, nrcpt=1 (queue active)\n",
        f"{s} mx1 postfix/smtpd[{pid}]: disconnect from {peer} ehlo=1 mail=1 rcpt=1 data=1 "
        f"quit=1 commands=5\n",
        f"{s} mx1 postfix/local[{pid + 2}]: {qid}: to=<rcpt{n % 3000}@domain2.example>, "
        f"relay=local, delay=0.21, delays=0.12/0.01/0/0.08, dsn=2.0.0, "
        f"status=sent (delivered to mailbox)\n",
        f"{s} mx1 postfix/qmgr[880]: {qid}: removed\n",
    ]


def _stall(t: datetime, n: int, pid: int) -> list[str]:
    peer = f"mail{n}.stall.example[192.0.2.{n % 250 + 1}]"
    s = _stamp(t)
    return [
        f"{s} mx1 postfix/smtpd[{pid}]: connect from {peer}\n",
        f"{s} mx1 postfix/smtpd[{pid}]: timeout after DATA (2310 bytes) from {peer}\n",
        f"{s} mx1 postfix/smtpd[{pid}]: disconnect from {peer} ehlo=1 mail=1 rcpt=1 "
        f"data=0/1 commands=3/4\n",
    ]


def lines(
    size_bytes: int,
    *,
    start: datetime = datetime(2024, 2, 7, 0, 0, 0),
    step: float = 1.0,
    stall_every: int = 5000,
    dup_every: int = 10000,
    planted: Planted | None = None,
) -> Iterator[str]:
    """Log lines until about ``size_bytes``; records what was written in ``planted``."""
    p = planted if planted is not None else Planted()
    n = 0
    t = start
    redeliver: deque[tuple[datetime, int, str]] = deque()
    while p.bytes < size_bytes:
        n += 1
        t += timedelta(seconds=step)
        pid = 10000 + n % 50000
        qid = f"{n:012X}"
        client_line = p.lines + 1 + _CLIENT_LINE
        if redeliver and redeliver[0][0] <= t:
            _, orig, msgid = redeliver.popleft()
            chunk = _message(t, orig, qid, msgid, pid)
            p.duplicates[msgid].append(client_line)
            p.messages += 1
        elif n % stall_every == 0:
            chunk = _stall(t, n, pid)
            p.stalls.append(p.lines + 2)
        else:
            msgid = f"{n}.{t:%Y%m%d%H%M%S}@sender{n % 997}.example"
            chunk = _message(t, n, qid, msgid, pid)
            p.messages += 1
            if n % dup_every == 7:
                redeliver.append((t + REDELIVERY_DELAY, n, msgid))
                p.duplicates[msgid] = [client_line]
        for line in chunk:
            p.bytes += len(line)
            p.lines += 1
            yield line
    # Originals whose second copy never got written are not duplicates.
    for _, _, msgid in redeliver:
        del p.duplicates[msgid]


def write(out: BinaryIO, size_bytes: int, **kw: object) -> Planted:
    """Write about ``size_bytes`` of log to ``out``; returns what was planted."""
    planted = Planted()
    buf: list[str] = []
    for line in lines(size_bytes, planted=planted, **kw):  # type: ignore[arg-type]
        buf.append(line)
        if len(buf) >= 4096:
            out.write("".join(buf).encode())
            buf.clear()
    out.write("".join(buf).encode())
    return planted


def mailguard_iis(
    retries: int = 5,
    interval: timedelta = timedelta(minutes=30),
    start: datetime = datetime(2024, 2, 7, 17, 0, 0),
) -> str:
    """An IIS W3C SMTP log of the KB article's case, for the HTML report and its test.

    A sender behind a PIX Mailguard (its EHLO arrives as ``xxxx`` and gets 500) sends
    one message; the end of data never reaches the server, the session times out
    (win32 10060) and the sender re-sends every ``interval``: ``retries`` re-sends,
    the last one accepted. Two other senders' messages go through in between.
    """
    fields = (
        "#Software: Microsoft Internet Information Services 6.0\n#Version: 1.0\n"
        "#Date: 2024-02-07 17:00:00\n#Fields: date time c-ip cs-username s-sitename "
        "s-computername s-ip s-port cs-method cs-uri-stem cs-uri-query sc-status "
        "sc-win32-status sc-bytes cs-bytes time-taken cs-version cs-host cs(User-Agent) "
        "cs(Cookie) cs(Referer)\n"
    )
    out = [fields]

    def row(
        t: datetime,
        ip: str,
        user: str,
        verb: str,
        query: str,
        status: str,
        win32: str,
        size: int = 0,
    ) -> None:
        out.append(
            f"{t:%Y-%m-%d %H:%M:%S} {ip} {user} SMTPSVC1 MX1 192.0.2.25 0 {verb} - "
            f"{query} {status} {win32} 40 {size} 0 SMTP - - - -\n"
        )

    def session(t: datetime, ip: str, host: str, mid: str, pix: bool, stall: bool) -> None:
        if pix:
            row(t, ip, "-", "xxxx", f"+{host}", "500", "0")
        row(t, ip, host, "HELO", f"+{host}", "250", "0")
        row(t + timedelta(seconds=1), ip, host, "MAIL", f"+FROM:<billing@{host}>", "250", "0")
        row(t + timedelta(seconds=1), ip, host, "RCPT", "+TO:<ap@domain2.example>", "250", "0")
        if stall:  # IIS writes the DATA line when the session times out, minutes later
            row(t + timedelta(minutes=10), ip, host, "DATA", f"+<{mid}>", "0", "10060", 48211)
        else:
            row(t + timedelta(seconds=3), ip, host, "DATA", f"+<{mid}>", "250", "0", 48211)
            row(t + timedelta(seconds=3), ip, host, "QUIT", f"+{host}", "240", "0")

    partner = ("203.0.113.25", "mail.partner.example")
    mid = "invoice-4711.20240207@partner.example"
    for i in range(retries + 1):
        t = start + interval * i
        session(t, *partner, mid, pix=True, stall=i < retries)
        if i in (1, 3):
            other = (f"198.51.100.{i}", f"mx{i}.other.example")
            session(t + timedelta(minutes=12), *other, f"m{i}@other.example", False, False)
    return "".join(out)
