"""What every log format parser shares: the line stream, the context it is given and
the stats it reports, and a bounded memory of ids. A leaf of the ``formats`` package,
so that each parser imports it and the package can import each parser."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ..model import Event

Lines = Iterable[tuple[int, bytes]]


@dataclass(slots=True)
class LineStats:
    """What a parser reports about its input besides events.

    ``unknown``: lines it could not place (neither a line it reads nor one it knows
    to skip), so that ``read - unknown`` is the number of lines understood.
    ``other``: lines of other programs in a shared syslog stream, skipped knowingly.
    ``sessions``: SMTP sessions the log shows, for formats without dialogue events.
    ``yearless_latest``: the latest time read from stamps without a year (classic
    syslog), None when every stamp had one: the year was a guess (``--year``).
    """

    unknown: int = 0
    other: int = 0  # syslog lines of other programs in the same stream (skipped)
    sessions: int = 0
    yearless_latest: datetime | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What a parser may need beyond the lines, and where it reports line stats."""

    file: str
    year: int | None = None
    stats: LineStats = field(default_factory=LineStats)


ParseFn = Callable[[Lines, Context], Iterator[Event]]


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class RecentIds:
    """Has this id been seen lately? A bounded, insertion-ordered memory of ids, so
    that counting distinct sessions costs bounded memory on any log."""

    __slots__ = ("_ids", "_max")

    def __init__(self, max_ids: int = 100_000) -> None:
        self._ids: dict[object, None] = {}
        self._max = max_ids

    def add(self, key: object) -> bool:
        """Remember ``key``; True if it was not remembered yet."""
        ids = self._ids
        if key in ids:
            return False
        if len(ids) >= self._max:
            del ids[next(iter(ids))]
        ids[key] = None
        return True
