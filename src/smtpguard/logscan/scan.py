"""Drives a scan: sources → format parser → session tracker / dedupe → findings.

One :class:`Scanner` spans all files of a run, so duplicates are found across
rotated logs; sessions are tracked per file. Stalls and suppressed copies are held
until every input is read, so that a gateway's ``jsonl`` log can explain what the
server behind it logged (:mod:`smtpguard.logscan.correlate`), whatever the order of
the files. Nothing here prints: the reports module renders the :class:`Result`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import ModuleType

from . import formats
from .correlate import Correlator, explained_summary
from .dedupe import DEFAULT_WINDOW, LOOPBACK_RELAY, REINJECTION, DuplicateIndex
from .formats import Context, LineStats
from .model import Copy, Delivered, Finding, Flag, Kind, Side, UpstreamEnd
from .sessions import SessionTracker
from .source import SNIFF_LINES, InputError, Source

# The hop smtpguard's own log records: its copies group with each other (a fleet's
# gateways), never with the copies a server behind it logged of the same transfers.
GATEWAY_LEG = "gateway"
# Findings kept for the report; a pathological log cannot exhaust memory with them.
MAX_FINDINGS = 100_000
UTF8_BOM = b"\xef\xbb\xbf"


class FormatError(InputError):
    """The format of an input could not be recognised."""


@dataclass(frozen=True, slots=True)
class Options:
    format: str = "auto"
    since: datetime | None = None
    until: datetime | None = None
    window: timedelta = DEFAULT_WINDOW
    year: int | None = None


@dataclass(frozen=True, slots=True)
class FileStats:
    file: str
    format: str
    lines: int
    bytes: int
    sessions: int
    open_in_data_at_end: int
    lines_understood: int = 0
    lines_other_programs: int = 0  # another program's lines in a shared syslog stream
    messages: int = 0  # copies that reached the end of data (or stalled), loopback too
    yearless_latest: datetime | None = None  # stamps without a year: latest read (--year)

    @property
    def understood_share(self) -> float | None:
        """Understood lines per line of this format (other programs' lines left out)."""
        own = self.lines - self.lines_other_programs
        return self.lines_understood / own if own > 0 else None


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)
    files: list[FileStats] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    dropped_findings: int = 0
    dedupe_evicted_early: int = 0
    first_time: datetime | None = None
    last_time: datetime | None = None
    window: timedelta = DEFAULT_WINDOW
    # Copies not indexed for duplicates, by reason (dedupe.LOOPBACK_RELAY, …), and
    # the copies from loopback that were indexed like any other.
    set_aside: Counter[str] = field(default_factory=Counter)
    loopback_counted: int = 0
    correlation: dict[str, object] | None = None  # when a gateway jsonl log was read

    def summary(self) -> dict[str, object]:
        formats: dict[str, dict[str, int]] = {}
        for f in self.files:
            agg = formats.setdefault(
                f.format,
                {"files": 0, "lines_read": 0, "lines_understood": 0, "lines_other_programs": 0},
            )
            agg["files"] += 1
            agg["lines_read"] += f.lines
            agg["lines_understood"] += f.lines_understood
            agg["lines_other_programs"] += f.lines_other_programs
        return {
            "findings": len(self.findings) + self.dropped_findings,
            "by_kind": dict(sorted(self.counts.items())),
            "files": [
                {
                    "file": f.file,
                    "format": f.format,
                    "lines": f.lines,
                    "lines_understood": f.lines_understood,
                    "lines_other_programs": f.lines_other_programs,
                    "bytes": f.bytes,
                    "sessions": f.sessions,
                    "messages": f.messages,
                    "open_in_data_at_end": f.open_in_data_at_end,
                }
                for f in self.files
            ],
            "formats": formats,
            "deliveries": self.deliveries,
            "first_time": self.first_time.isoformat() if self.first_time else None,
            "last_time": self.last_time.isoformat() if self.last_time else None,
            "window_seconds": int(self.window.total_seconds()),
            "errors": list(self.errors),
            "findings_not_listed": self.dropped_findings,
            "dedupe_groups_evicted_early": self.dedupe_evicted_early,
            "set_aside": dict(sorted(self.set_aside.items())),
            "loopback_copies_counted": self.loopback_counted,
            "correlation": self.correlation,
        }


_SET_ASIDE_WHY = {
    LOOPBACK_RELAY: "sent to a relay on loopback and received back in the same log (a "
    "content filter's hand-off): not a delivery to the destination",
    REINJECTION: "received from loopback after the same Message-ID was handed to such a "
    "relay: the content filter re-injecting it",
}


def notes(r: Result) -> list[str]:
    """What the reports say besides findings: what was read together, what was set
    aside from the duplicate check and why."""
    out: list[str] = []
    c = r.correlation
    if c is not None:
        explained = c.get("server_losses_explained") or {}
        assert isinstance(explained, dict)
        named = c.get("gateway_logs")
        logs = ", ".join(map(str, named)) if isinstance(named, list) else ""
        total = sum(int(v) for v in explained.values())
        by = ", ".join(f"{k} {v}" for k, v in explained.items())
        offset = c.get("clock_offset_seconds")
        shift = f"; the server's clock reads {offset} s ahead of the gateway's" if offset else ""
        out.append(
            f"Read with the gateway's log ({logs}): {total} server-side loss(es) in DATA "
            f"matched a connection the gateway dropped on purpose{f' ({by})' if by else ''}; "
            f"they are not counted as stalls{shift}."
        )
    order = [LOOPBACK_RELAY, REINJECTION]  # the hand-off, then what came back
    for reason, n in sorted(
        r.set_aside.items(),
        key=lambda kv: (kv[0] not in order, order.index(kv[0]) if kv[0] in order else 0, kv[0]),
    ):
        why = _SET_ASIDE_WHY.get(reason, reason)
        out.append(f"Set aside from the duplicate check: {n:,} cop(ies) {why}.")
    if r.loopback_counted:
        out.append(
            f"{r.loopback_counted:,} cop(ies) came from loopback and were checked for "
            f"duplicates like any other (a gateway or filter in front that does not pass "
            f"the client's address on shows every client as loopback)."
        )
    return out


def detect_format(head: list[bytes]) -> str | None:
    scores = {name: mod.sniff(head) for name, mod in formats.registry().items()}
    name, best = max(scores.items(), key=lambda kv: kv[1])
    return name if best > 0 else None


class Scanner:
    def __init__(self, options: Options, on_progress: Callable[[int], None] | None = None):
        self.options = options
        self.result = Result(window=options.window)
        self._dedupe = DuplicateIndex(options.window)
        self._on_progress = on_progress
        self._registry: dict[str, ModuleType] = formats.registry()
        self._filtered = options.since is not None or options.until is not None
        self._correlator = Correlator()
        self._gateway_logs: list[str] = []

    def scan(self, src: Source) -> None:
        """Scan one input; raises InputError (FormatError) when it cannot be read."""
        lines = src.lines()
        head = list(itertools.islice(lines, SNIFF_LINES))
        if head and head[0][1].startswith(UTF8_BOM):  # Notepad-edited logs, some exports
            head[0] = (head[0][0], head[0][1][len(UTF8_BOM) :])
        fmt = self.options.format
        if fmt == "auto":
            detected = detect_format([raw for _, raw in head])
            if detected is None:
                if not head:
                    self.result.files.append(FileStats(src.display, "empty", 0, 0, 0, 0))
                    return
                raise FormatError(
                    f"{src.display}: cannot tell the log format: "
                    f"{formats.explain([raw for _, raw in head])}"
                )
            fmt = detected
        module = self._registry[fmt]
        tracker = SessionTracker(src.display, GATEWAY_LEG if fmt == "jsonl" else "")
        stats = LineStats()
        ctx = Context(file=src.display, year=self.options.year, stats=stats)
        stream = self._progress(itertools.chain(head, lines), src)
        delivered = self._delivered
        gateway = fmt == "jsonl"
        if gateway:
            self._gateway_logs.append(src.display)
            self._correlator.gateway_seen = True
        hold = self._correlator.hold
        copies = 0
        for ev in module.parse(stream, ctx):
            if isinstance(ev, Delivered):
                copies += 1
                delivered(src.display, ev)
                if not gateway:
                    self._correlator.server_copy(src.display, ev)
            elif isinstance(ev, Flag):
                f = Finding(
                    ev.kind,
                    src.display,
                    ev.line,
                    ev.time,
                    ev.peer,
                    ev.session,
                    ev.detail,
                    _stall_copy(src.display, ev),
                    ev.start,
                )
                if ev.kind is Kind.SUPPRESSED:
                    tracker.suppress(ev.session)
                if ev.kind not in _HELD or not hold(f, ev.side, gateway):
                    self._add(f)
            elif isinstance(ev, UpstreamEnd):
                self._correlator.upstream(src.display, ev)
            else:
                if ev.time is not None:
                    self._seen(ev.time)
                for out in tracker.feed(ev):
                    if isinstance(out, Delivered):
                        copies += 1
                        self._delivered(src.display, out)
                    elif out.kind not in _HELD or not hold(out, Side.RECEIVING, gateway):
                        self._add(out)
        for _ in tracker.close():
            pass
        other = stats.other
        understood = max(0, src.lines_read - stats.unknown - other)
        if src.lines_read and not understood:  # nothing read: never a clean bill for it
            named = "" if self.options.format == "auto" else " (named with --format)"
            raise FormatError(
                f"{src.display}: none of its {src.lines_read:,} lines reads as the "
                f"{fmt} format{named}; nothing was scanned: "
                f"{formats.explain([raw for _, raw in head], fmt)}"
            )
        self.result.files.append(
            FileStats(
                src.display,
                fmt,
                src.lines_read,
                src.bytes_read,
                tracker.sessions_seen + stats.sessions,
                tracker.open_in_data_at_end,
                understood,
                other,
                copies,
                stats.yearless_latest,
            )
        )

    def finish(self) -> Result:
        for f in self._correlator.finish():
            self._add(f)
        for f in self._dedupe.close():
            self._add(f)
        r = self.result
        r.deliveries = self._dedupe.deliveries
        r.dedupe_evicted_early = self._dedupe.evicted_early
        r.set_aside = self._dedupe.set_aside
        r.loopback_counted = self._dedupe.loopback_counted
        if self._gateway_logs and len(r.files) > len(self._gateway_logs):  # read together
            r.correlation = explained_summary(self._correlator, self._gateway_logs)
        r.findings.sort(key=lambda f: (f.time or datetime.min, f.file, f.line))
        return r

    def _progress(
        self, it: Iterator[tuple[int, bytes]], src: Source
    ) -> Iterator[tuple[int, bytes]]:
        cb = self._on_progress
        if cb is None:
            return it  # no generator layer on the per-line path
        return self._report_progress(it, src, cb)

    @staticmethod
    def _report_progress(
        it: Iterator[tuple[int, bytes]], src: Source, cb: Callable[[int], None]
    ) -> Iterator[tuple[int, bytes]]:
        for item in it:
            if item[0] & 0x3FFF == 0:
                cb(src.position)
            yield item
        cb(src.position)

    def _seen(self, t: datetime) -> None:
        r = self.result
        if r.first_time is None or t < r.first_time:
            r.first_time = t
        if r.last_time is None or t > r.last_time:
            r.last_time = t

    def _in_range(self, t: datetime | None) -> bool:
        o = self.options
        if t is None:
            return o.since is None and o.until is None
        return (o.since is None or t >= o.since) and (o.until is None or t <= o.until)

    def _delivered(self, file: str, d: Delivered) -> None:
        t = d.time
        if t is not None:
            r = self.result
            if r.last_time is None or t > r.last_time:
                r.last_time = t
            if r.first_time is None or t < r.first_time:
                r.first_time = t
        if self._filtered and not self._in_range(t):
            return
        for f in self._dedupe.add(file, d):
            self._add(f)

    def _add(self, f: Finding) -> None:
        if f.time is not None:
            self._seen(f.time)
        if not self._in_range(f.time):
            return
        self.result.counts[str(f.kind)] += 1
        if len(self.result.findings) < MAX_FINDINGS:
            self.result.findings.append(f)
        else:
            self.result.dropped_findings += 1


# Findings held until every input is read (correlate.py).
_HELD = frozenset({Kind.STALLED_DATA, Kind.SUPPRESSED})


def _stall_copy(file: str, ev: Flag) -> tuple[Copy, ...]:
    """A stall a log states itself, as one (stalled) session for the timeline."""
    if ev.kind is not Kind.STALLED_DATA:
        return ()
    return (Copy(file, ev.line, ev.time, ev.peer, True, ev.start, ev.time),)
