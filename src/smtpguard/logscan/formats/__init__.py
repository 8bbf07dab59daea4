"""One streaming parser per log format; each turns byte lines into model events.

Every parser module exposes ``NAME``, ``sniff(lines) -> int`` (a score for
``--format auto`` on the first lines of a file) and ``parse(lines, ctx)``, a
generator over ``(line_number, raw_bytes)`` pairs that yields
:mod:`smtpguard.logscan.model` events. Lines are framed on bytes by the reader and
decoded per field with ``surrogateescape``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType

from ..model import Event

Lines = Iterable[tuple[int, bytes]]


@dataclass(frozen=True, slots=True)
class Context:
    """What a parser may need beyond the lines."""

    file: str
    year: int | None = None


ParseFn = Callable[[Lines, Context], Iterator[Event]]


def registry() -> dict[str, ModuleType]:
    from . import exchange, exim, iis, ims, jsonl, postfix, zeek

    return {m.NAME: m for m in (ims, iis, exchange, postfix, exim, zeek, jsonl)}


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
