"""One streaming parser per log format; each turns byte lines into model events.

Every parser module exposes ``NAME``, ``sniff(lines) -> int`` (a score for
``--format auto`` on the first lines of a file) and ``parse(lines, ctx)``, a
generator over ``(line_number, raw_bytes)`` pairs that yields
:mod:`smtpguard.logscan.model` events. Lines are framed on bytes by the reader and
decoded per field with ``surrogateescape``.
"""

from __future__ import annotations

import re
from types import ModuleType

from . import exchange, exim, iis, ims, jsonl, msgtrk, postfix, zeek
from .base import Context, Lines, LineStats, ParseFn, RecentIds, text

__all__ = [
    "Context",
    "LineStats",
    "Lines",
    "ParseFn",
    "RecentIds",
    "explain",
    "registry",
    "text",
]


def registry() -> dict[str, ModuleType]:
    return {m.NAME: m for m in (ims, iis, exchange, msgtrk, postfix, exim, zeek, jsonl)}


# What each format's lines look like, for the error that says why a file was not read.
SHAPES = {
    "postfix": "syslog lines of a Postfix program under any syslog_name, e.g. "
    "'Feb  7 17:01:20 mx postfix/smtpd[2117]: connect from …' or 'mx-in/qmgr[880]: …'",
    "exim": "Exim mainlog lines, e.g. '2024-02-07 17:01:20 1rXa2b-000Abc-Cd <= a@example.org "
    "H=… [192.0.2.1]'",
    "iis": "an IIS/Exchange 2000-2003 W3C log whose '#Fields:' line names cs-method",
    "exchange": "Exchange 2007+ SmtpReceive/SmtpSend CSV rows, e.g. "
    "'2024-02-07T17:01:20.123Z,connector,08DC…,0,10.0.0.1:25,192.0.2.1:4321,+,,'",
    "msgtrk": "Exchange message tracking CSV ('#Fields: date-time,client-ip,…' or its rows)",
    "ims": "Exchange 5.5 IMS protocol log lines, e.g. '2/7/01 5:01:21 PM : <<< HELO mail.example'",
    "zeek": "a Zeek smtp.log ('#path smtp' TSV, or JSON objects with uid and id.orig_h)",
    "jsonl": "smtpguard's jsonl protocol log (one JSON object with session and event per line)",
}
# Any syslog line: stamp, host, program[pid]: (the program is what the error names).
_SYSLOG = re.compile(
    rb"(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?"
    rb"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    rb" \S+ ([^\s:\[]+)(?:\[\d+\])?: "
)
MAX_NAMES = 8


def _smtp_program(name: str) -> bool:
    prefix, slash, program = name.rpartition("/")
    if slash and (program.encode() in postfix.PROGRAMS or prefix.startswith("postfix")):
        return True
    return name == "exim" or name.startswith("exim4")


def explain(head: list[bytes], fmt: str | None = None) -> str:
    """Why the first lines of a file read as no format (``fmt`` None) or not as ``fmt``:
    what they look like, and what was expected. One sentence or two, for an error."""
    lines = [raw for raw in head if raw.strip()]
    if not lines:
        return "it has no non-blank lines"
    programs: dict[str, int] = {}
    syslog = 0
    for raw in lines:
        m = _SYSLOG.match(raw)
        if m is not None:
            syslog += 1
            name = text(m.group(1))
            programs[name] = programs.get(name, 0) + 1
    if syslog * 2 >= len(lines):
        seen = sorted(programs, key=lambda n: -programs[n])
        names = ", ".join(seen[:MAX_NAMES]) + (", …" if len(seen) > MAX_NAMES else "")
        what = f"the lines look like syslog, program names seen: {names}"
        if not any(_smtp_program(n) for n in seen):
            what += (
                "; none is a known SMTP program (Postfix's NAME/smtpd, NAME/smtp, "
                "NAME/qmgr, NAME/cleanup…, or exim)"
            )
    else:
        first = text(lines[0]).rstrip("\r\n")
        first = first if len(first) <= 100 else first[:99] + "…"
        what = f"its first line reads {first!r}"
    if fmt is None:
        return what + "; name the format with --format if it is one logscan reads"
    return f"{what}; the {fmt} format expects {SHAPES.get(fmt, fmt + ' lines')}"
