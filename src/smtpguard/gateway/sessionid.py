"""Session IDs that name one session across workers, restarts and a fleet's hosts.

An ID is ``PREFIX.N``: ``PREFIX`` is eight base-32 characters drawn at random (40 bits)
once per process, ``N`` the process's session counter in the same alphabet
(``k7m2q9xd.1``, ``k7m2q9xd.1b``…). Each worker draws its own prefix after it is forked
(the pid is checked on every call, so a prefix drawn before a fork is never shared),
and a restarted process draws a new one, so counters that start again at 1 never
repeat an ID. Between processes, two prefixes are equal with probability 2⁻⁴⁰ a pair:
across 10,000 process lives (a fleet restarted daily for years) about 5 in 100,000.
The prefix also tells at a glance which sessions one process served.

The alphabet is Crockford's base 32 in lower case (no ``i``, ``l``, ``o``, ``u``), so
an ID read aloud or copied by hand from a terminal is not misread.
"""

from __future__ import annotations

import os
import secrets

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
PREFIX_BITS = 40
PREFIX_LENGTH = PREFIX_BITS // 5


def base32(n: int, width: int = 1) -> str:
    """``n`` (≥ 0) in :data:`ALPHABET`, at least ``width`` characters."""
    digits: list[str] = []
    while n or len(digits) < width:
        n, d = divmod(n, 32)
        digits.append(ALPHABET[d])
    return "".join(reversed(digits))


class SessionIds:
    """The ID source of one process (a gateway instance holds one)."""

    __slots__ = ("_count", "_pid", "_prefix")

    def __init__(self) -> None:
        self._pid = 0
        self._prefix = ""
        self._count = 0

    def next(self) -> str:
        pid = os.getpid()
        if pid != self._pid:  # first call, or the first after a fork
            self._pid = pid
            self._prefix = base32(secrets.randbits(PREFIX_BITS), PREFIX_LENGTH)
            self._count = 0
        self._count += 1
        return f"{self._prefix}.{base32(self._count)}"
