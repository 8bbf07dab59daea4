"""One streaming parser per log format; each turns byte lines into model events.

Every parser module exposes ``NAME``, ``sniff(lines) -> int`` (a score for
``--format auto`` on the first lines of a file) and ``parse(lines, ctx)``, a
generator over ``(line_number, raw_bytes)`` pairs that yields
:mod:`smtpguard.logscan.model` events. Lines are framed on bytes by the reader and
decoded per field with ``surrogateescape``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType

from ..model import Event

Lines = Iterable[tuple[int, bytes]]


@dataclass(slots=True)
class LineStats:
    """What a parser reports about its input besides events.

    ``unknown``: lines it could not place (neither a line it reads nor one it knows
    to skip), so that ``read - unknown`` is the number of lines understood.
    ``other``: lines of other programs in a shared syslog stream, skipped knowingly.
    ``sessions``: SMTP sessions the log shows, for formats without dialogue events.
    """

    unknown: int = 0
    other: int = 0  # syslog lines of other programs in the same stream (skipped)
    sessions: int = 0


@dataclass(frozen=True, slots=True)
class Context:
    """What a parser may need beyond the lines, and where it reports line stats."""

    file: str
    year: int | None = None
    stats: LineStats = field(default_factory=LineStats)


ParseFn = Callable[[Lines, Context], Iterator[Event]]


def registry() -> dict[str, ModuleType]:
    from . import exchange, exim, iis, ims, jsonl, msgtrk, postfix, zeek

    return {m.NAME: m for m in (ims, iis, exchange, msgtrk, postfix, exim, zeek, jsonl)}


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
