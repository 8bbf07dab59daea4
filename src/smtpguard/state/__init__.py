"""Shared state for limits and duplicate suppression (docs/design.md#shared-state).

``open_store(settings)`` gives the store ``[state] url`` names: ``"local"`` (the
default: SQLite in WAL mode under ``[state] directory``, shared by the workers of a
host) or a Redis/Valkey URL (shared by a fleet). Callers use it through
:class:`~smtpguard.state.guard.Guarded`, which fails open.

The embedded store is made only when a feature needs one (``state/attach.py``), and
never in the working directory unless configured there: without ``[state]
directory`` it lives in the per-user state directory, :func:`default_directory`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from smtpguard.state.base import Lease, Store, StoreError
from smtpguard.state.guard import FAIL_OPEN, RECOVERED, UNAVAILABLE, Guarded

__all__ = [
    "FAIL_OPEN",
    "RECOVERED",
    "UNAVAILABLE",
    "DedupeSettings",
    "Guarded",
    "Lease",
    "StateSettings",
    "Store",
    "StoreError",
    "default_directory",
    "open_store",
    "prepare",
]

LOCAL = "local"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class StateSettings:
    """``[state]``: where shared state lives and how long the gateway waits for it."""

    url: str = LOCAL
    directory: str = ""  # the embedded store's; load() puts default_directory() here
    timeout: float = 0.5  # seconds per store operation, then fail open
    retry: float = 1.0  # after a failure, seconds before the store is tried again
    lease: float = 30.0  # a session's slot expires this long after its last renewal
    prefix: str = "smtpguard:"  # Redis key prefix

    @property
    def is_local(self) -> bool:
        return self.url == LOCAL


@dataclass(frozen=True)
class DedupeSettings:
    """``[dedupe]``: duplicate suppression, off by default."""

    enabled: bool = False
    window: float = 86400.0  # seconds a message is remembered after the server's 250


# Where a root service keeps its state (FHS /var/lib).
SYSTEM_DIRECTORY = "/var/lib/smtpguard"


def default_directory(environ: Mapping[str, str], euid: int) -> str:
    """The embedded store's directory when ``[state] directory`` is not set, first
    that applies: systemd's ``$STATE_DIRECTORY`` (a unit with ``StateDirectory=``),
    ``$XDG_STATE_HOME/smtpguard``, ``/var/lib/smtpguard`` for root, else
    ``~/.local/state/smtpguard`` (the XDG base directory default). Never the
    working directory."""
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    xdg = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative path is invalid and ignored
        return os.path.join(xdg, "smtpguard")
    if euid == 0:
        return SYSTEM_DIRECTORY
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local", "state", "smtpguard")


# The store modules are imported where a store is made, not at the top: they load
# redis (a network client) and sqlite3 with a thread pool, which a gateway without a
# shared store never needs (start-up time, not a cycle: they do not import this package).


def prepare(settings: StateSettings) -> None:
    """Before workers fork: create the embedded database (the directory must be
    usable). A Redis URL is not contacted here: a fleet starts while its store is
    down, and fails open until it answers."""
    if settings.is_local:
        from smtpguard.state.sqlite_store import prepare as prepare_sqlite

        prepare_sqlite(settings.directory)


def open_store(settings: StateSettings) -> Guarded:
    """The store for this process (call it after forking: it owns a thread or
    sockets)."""
    store: Store
    if settings.is_local:
        from smtpguard.state.sqlite_store import SqliteStore

        store = SqliteStore(settings.directory)
    else:
        from smtpguard.state.redis_store import RedisStore

        store = RedisStore(settings.url, settings.timeout, settings.prefix)
    return Guarded(store, settings.retry, timeout=settings.timeout)
