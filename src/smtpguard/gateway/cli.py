"""``smtpguard serve``: its flags come from the config schema (:mod:`.flags`), its
work from the composition root (:mod:`.compose`).

The rest of ``serve`` lives in parts of its own: :mod:`.startup` (checks before
anything listens), :mod:`.startblock` (the block printed once it serves) and
:mod:`.reload` (SIGHUP).
"""

from __future__ import annotations

from typing import Any

from smtpguard.gateway import compose, flags
from smtpguard.gateway.flags import overrides
from smtpguard.gateway.startblock import (
    XCLIENT_FAIL_OPEN_WARNING,
    XCLIENT_OFF_WARNING,
    greeting_shown,
)

__all__ = [
    "XCLIENT_FAIL_OPEN_WARNING",
    "XCLIENT_OFF_WARNING",
    "greeting_shown",
    "overrides",
    "register",
]


def register(sub: Any) -> None:
    flags.add_parser(sub).set_defaults(func=compose.run)
