"""Synthetic Postfix maillog for the memory test and ``bench/logscan_bench.py``.

Realistic line shapes (smtpd, cleanup, qmgr, local), one message every ``step``
seconds; every ``stall_every``-th session times out after DATA and every
``dup_every``-th message is delivered again 30 minutes later, so the scan has real
work to do in the session and duplicate paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import BinaryIO

_MON = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


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


def lines(
    size_bytes: int,
    *,
    start: datetime = datetime(2024, 2, 7, 0, 0, 0),
    step: float = 1.0,
    stall_every: int = 5000,
    dup_every: int = 10000,
) -> Iterator[str]:
    written = 0
    n = 0
    t = start
    redeliver: list[tuple[datetime, int, str]] = []
    while written < size_bytes:
        n += 1
        t += timedelta(seconds=step)
        pid = 10000 + n % 50000
        if redeliver and redeliver[0][0] <= t:
            _, orig, msgid = redeliver.pop(0)
            chunk = _message(t, orig, f"R{n:011X}", msgid, pid)
        elif n % stall_every == 0:
            peer = f"mail{n}.stall.example[192.0.2.{n % 250 + 1}]"
            s = _stamp(t)
            chunk = [
                f"{s} mx1 postfix/smtpd[{pid}]: connect from {peer}\n",
                f"{s} mx1 postfix/smtpd[{pid}]: timeout after DATA (2310 bytes) from {peer}\n",
                f"{s} mx1 postfix/smtpd[{pid}]: disconnect from {peer} ehlo=1 mail=1 rcpt=1 "
                f"data=0/1 commands=3/4\n",
            ]
        else:
            msgid = f"{n}.{t:%Y%m%d%H%M%S}@sender{n % 997}.example"
            chunk = _message(t, n, f"{n:012X}", msgid, pid)
            if n % dup_every == 7:
                redeliver.append((t + timedelta(minutes=30), n, msgid))
        for line in chunk:
            written += len(line)
            yield line


def write(out: BinaryIO, size_bytes: int, **kw: object) -> int:
    """Write about ``size_bytes`` of log to ``out``; returns the bytes written."""
    total = 0
    buf: list[str] = []
    for line in lines(size_bytes, **kw):  # type: ignore[arg-type]
        buf.append(line)
        if len(buf) >= 4096:
            data = "".join(buf).encode()
            out.write(data)
            total += len(data)
            buf.clear()
    data = "".join(buf).encode()
    out.write(data)
    return total + len(data)
