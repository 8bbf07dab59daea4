"""Find the line of a key in TOML source text.

``tomllib`` returns plain dicts without positions, so error messages would not be
able to say where a bad value is. This module walks the source once with a small
skeleton parser that understands just enough TOML to know which key path starts on
which line: table headers (``[a.b]``, ``[[a]]``), dotted and quoted keys, inline
tables, arrays (each element is recorded with its index) and every string form, so
that text inside strings and comments is never mistaken for a key. It only runs on
text that ``tomllib`` has already accepted, so it can be lenient about errors.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_lines(source: str) -> dict[Path, int]:
    """Map every key path (and array element) in ``source`` to its 1-based line."""
    return _Skeleton(source).run()


def find_line(source: str, path: Sequence[str | int]) -> int | None:
    """The line where ``path`` is set, else the line of its closest enclosing key or
    table; None when not even the first key appears (a default value)."""
    lines = key_lines(source)
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return None


class _Skeleton:
    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0
        self.n = len(source)
        self.found: dict[Path, int] = {}
        self._starts = [0] + [k + 1 for k, c in enumerate(source) if c == "\n"]
        self._aot: dict[Path, int] = {}  # array-of-tables counters

    def run(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self._skip_blank(newlines=True)
            if self.i >= self.n:
                return self.found
            if self.s[self.i] == "[":
                table = self._header()
            else:
                key = self._key()
                self._record(table, key)
                self._skip_blank()
                if self._peek("="):
                    self.i += 1
                self._skip_blank()
                self._value((*table, *key))

    # -- pieces ------------------------------------------------------------------------
    def _line(self) -> int:
        return bisect.bisect_right(self._starts, self.i)

    def _record(self, base: Path, key: Path) -> None:
        line = self._line()
        for k in range(1, len(key) + 1):
            self.found.setdefault((*base, *key[:k]), line)

    def _peek(self, text: str) -> bool:
        return self.s.startswith(text, self.i)

    def _skip_blank(self, newlines: bool = False) -> None:
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.i = self.n if end < 0 else end
            else:
                return

    def _header(self) -> Path:
        double = self._peek("[[")
        self.i += 2 if double else 1
        self._skip_blank()
        key = self._key()
        self._skip_blank()
        self.i += 2 if double else 1
        if double:
            index = self._aot.get(key, 0)
            self._aot[key] = index + 1
            self._record((), key)
            key = (*key, index)
        self._record((), key)
        return key

    def _key(self) -> Path:
        parts: list[str | int] = []
        while self.i < self.n:
            self._skip_blank()
            c = self.s[self.i] if self.i < self.n else ""
            if c in "\"'":
                parts.append(self._string())
            else:
                start = self.i
                while self.i < self.n and self.s[self.i] in _BARE:
                    self.i += 1
                if self.i == start:  # not a key at all: step over it
                    self.i += 1
                    break
                parts.append(self.s[start : self.i])
            self._skip_blank()
            if self._peek("."):
                self.i += 1
                continue
            break
        return tuple(parts)

    def _string(self) -> str:
        """Consume a string of any form; return its (roughly decoded) value."""
        quote = self.s[self.i]
        if self._peek(quote * 3):
            end = self.s.find(quote * 3, self.i + 3)
            while quote == '"' and end > 0 and _escaped(self.s, end):
                end = self.s.find(quote * 3, end + 1)
            end = self.n if end < 0 else end + 3
            while end < self.n and self.s[end] == quote:  # up to two more quotes
                end += 1
            text = self.s[self.i + 3 : end - 3]
            self.i = end
            return text
        j = self.i + 1
        out: list[str] = []
        while j < self.n and self.s[j] != quote and self.s[j] != "\n":
            if quote == '"' and self.s[j] == "\\" and j + 1 < self.n:
                char, j = _unescape(self.s, j)
                out.append(char)
                continue
            out.append(self.s[j])
            j += 1
        self.i = j + 1
        return "".join(out)

    def _value(self, path: Path) -> None:
        if self.i >= self.n:
            return
        c = self.s[self.i]
        if c in "\"'":
            self._string()
        elif c == "[":
            self.i += 1
            index = 0
            while True:
                self._skip_blank(newlines=True)
                if self.i >= self.n or self._peek("]"):
                    self.i += 1
                    return
                if self._peek(","):
                    self.i += 1
                    continue
                self.found.setdefault((*path, index), self._line())
                self._value((*path, index))
                index += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip_blank(newlines=True)
                if self.i >= self.n or self._peek("}"):
                    self.i += 1
                    return
                if self._peek(","):
                    self.i += 1
                    continue
                key = self._key()
                self._record(path, key)
                self._skip_blank()
                if self._peek("="):
                    self.i += 1
                self._skip_blank()
                self._value((*path, *key))
        else:
            while self.i < self.n and self.s[self.i] not in ",]}\r\n#":
                self.i += 1


_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b"}


def _unescape(s: str, j: int) -> tuple[str, int]:
    """Decode the escape at ``s[j]`` (a backslash); return it and the next index."""
    c = s[j + 1]
    width = {"u": 4, "U": 8, "x": 2}.get(c)
    if width is not None:
        digits = s[j + 2 : j + 2 + width]
        try:
            return chr(int(digits, 16)), j + 2 + width
        except ValueError:
            return c, j + 2
    return _ESCAPES.get(c, c), j + 2


def _escaped(s: str, pos: int) -> bool:
    """True when the character at ``pos`` follows an odd run of backslashes."""
    k = pos - 1
    while k >= 0 and s[k] == "\\":
        k -= 1
    return (pos - 1 - k) % 2 == 1
