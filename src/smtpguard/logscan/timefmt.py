"""Timestamps and durations as the log formats write them.

Every time is normalised to a *naive* datetime: aware times (ISO-8601 with an offset,
Zeek epochs) are converted to UTC and stripped; naive local times (IMS, classic
syslog) are kept as written. Mixing both in one scan therefore compares local wall
time with UTC, which is the best a log without an offset allows; it never crashes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}


_MONTHS_B = {m.encode(): i for m, i in _MONTHS.items()}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m`` → timedelta; ValueError else."""
    text = text.strip().lower()
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 2h, 1d)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or total <= 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return timedelta(seconds=total)


def naive(dt: datetime) -> datetime:
    """Aware → naive UTC; naive stays as is."""
    if dt.tzinfo is None:
        return dt
    return dt.astimezone(UTC).replace(tzinfo=None)


def parse_iso(text: str) -> datetime | None:
    """ISO-8601 (``Z`` allowed, ``T`` or space) → naive datetime; None if invalid."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return naive(datetime.fromisoformat(text))
    except ValueError:
        return None


def parse_user_time(text: str) -> datetime:
    """A --since/--until value: ISO date or date-time; ValueError with a clear text."""
    dt = parse_iso(text)
    if dt is None:
        raise ValueError(f"not an ISO date or date-time: {text!r} (e.g. 2024-02-07T17:00)")
    return dt


def from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)


def parse_ims(date: str, clock: str, ampm: str) -> datetime | None:
    """``2/7/01`` ``5:01:20`` ``PM`` (US order, as Exchange 5.5 wrote it)."""
    try:
        month, day, year = (int(x) for x in date.split("/"))
        hour, minute, second = (int(x) for x in clock.split(":"))
    except ValueError:
        return None
    if year < 100:
        year += 2000 if year < 70 else 1900
    hour %= 12
    if ampm.upper() == "PM":
        hour += 12
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


class SyslogClock:
    """Classic syslog stamps (``Feb  7 17:01:20``) carry no year.

    The year starts at ``year`` (default: the current one). Each stamp gets the year
    that puts its month within six months of the latest month seen so far in the
    current year: a month more than six before it starts a new year (a maillog
    rotated over December → January), one more than six after it belongs to the
    year before (a line out of order, a log pasted newest first) and moves nothing.
    Unsorted input therefore cannot make the year drift; sorted input rolls over as
    before. Fields come as the bytes of the log line: a maillog is read undecoded.
    ``latest`` is the latest time given out (None: no stamp read), for the hint that
    the year was guessed (:func:`year_hint`).
    """

    __slots__ = ("_latest", "_year", "latest")

    def __init__(self, year: int | None = None) -> None:
        self._year = year or datetime.now().year
        self._latest = 0  # latest month seen in the current year; 0: none yet
        self.latest: datetime | None = None

    def parse(self, mon: bytes, day: bytes, clock: bytes) -> datetime | None:
        """``b"Feb"``, ``b" 7"``, ``b"17:01:20"`` (a fraction of a second is dropped)."""
        month = _MONTHS_B.get(mon)
        if month is None:
            return None
        year, latest = self._year, self._latest
        if not latest:
            self._latest = month
        elif month < latest - 6:
            year = self._year = year + 1
            self._latest = month
        elif month > latest + 6:
            year -= 1
        elif month > latest:
            self._latest = month
        try:
            h, mi, s = clock.split(b":")
            t = datetime(year, month, int(day), int(h), int(mi), int(s.partition(b".")[0]))
        except ValueError:
            return None
        if self.latest is None or t > self.latest:
            self.latest = t
        return t


# Slack before a guessed date counts as "in the future" (clock skew, time zones).
FUTURE_SLACK = timedelta(days=1)


def year_hint(
    file: str,
    latest: datetime | None,
    year: int | None,
    now: datetime,
    modified: datetime | None = None,
) -> str | None:
    """What to tell the user about a file whose stamps carry no year (``latest``: the
    latest time read from them; None when every stamp had a year), or None.

    Without ``--year`` the year is a guess; say so, and say why the guess looks wrong
    when the latest date is after the run or after the file was last modified."""
    if latest is None:
        return None
    after = ""
    if latest > now + FUTURE_SLACK:
        after = f"; the latest, {latest:%Y-%m-%d %H:%M}, is in the future"
    elif modified is not None and latest > modified + FUTURE_SLACK:
        after = (
            f"; the latest, {latest:%Y-%m-%d %H:%M}, is after the file was last "
            f"modified ({modified:%Y-%m-%d %H:%M})"
        )
    if year is not None:
        if not after:
            return None
        return f"{file}: its stamps carry no year and were read from --year {year}{after}"
    return (
        f"{file}: its syslog stamps carry no year; they were read as the current year "
        f"({now.year}, rolling over at new year){after}. If the log is older, pass "
        f"--year YYYY (the year of its first line)"
    )


def human_delta(delta: timedelta) -> str:
    """``+1h02m03s`` style, for intervals between duplicate copies."""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{sign}{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{sign}{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{sign}{m}m{s:02d}s"
    return f"{sign}{s}s"
