"""Wiring the shared store into ``serve``: opened only when a rule needs it.

``prepare_for(settings)`` runs in the parent before any fork (the embedded database
is created there, so an unusable ``[state] directory`` is one line at start);
``attach(gateway, settings)`` runs in each worker and gives the gateway its
:class:`~smtpguard.gateway.access.SharedLimits`, :class:`~smtpguard.state.dedupe.
Dedupe` and :class:`~smtpguard.state.ratelimit.RateLimits` over one store per
process. With no per-address limit, no ``rate-limit`` check and dedupe off, no store
is opened and no session pays a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtpguard.errors import CliError
from smtpguard.gateway.access import SharedLimits
from smtpguard.state import Guarded, StoreError, open_store, prepare
from smtpguard.state.dedupe import Dedupe
from smtpguard.state.passes import Passes
from smtpguard.state.ratelimit import RateLimits, uses_rate_limit

if TYPE_CHECKING:
    from smtpguard.config.load import Settings
    from smtpguard.gateway.server import Gateway


def needed(settings: Settings) -> bool:
    """True when a configured rule counts across sessions or dedupe is on."""
    a = settings.access
    return (
        a.max_sessions_per_ip > 0
        or a.connection_rate > 0
        or settings.dedupe.enabled
        or uses_rate_limit(settings.policy)
        or settings.policy.screen.greet_wait > 0
    )


def describe(settings: Settings) -> str | None:
    """The start-up block's line: which store, for what; None when none is used."""
    if not needed(settings):
        return None
    # Imported here, not at the top: the store modules load redis and sqlite3, which a
    # gateway without a shared store never needs (start-up time, not a cycle).
    from smtpguard.state.redis_store import redacted
    from smtpguard.state.sqlite_store import database_path

    st = settings.state
    where = f"local {database_path(st.directory).absolute()}" if st.is_local else redacted(st.url)
    uses = []
    if settings.access.max_sessions_per_ip > 0 or settings.access.connection_rate > 0:
        uses.append("per-address limits")
    if uses_rate_limit(settings.policy):
        uses.append("check rate limits")
    if settings.dedupe.enabled:
        uses.append(f"dedupe ({settings.dedupe.window:g}s window)")
    if settings.policy.screen.greet_wait > 0:
        uses.append(f"greeting passes ({settings.policy.screen.pass_ttl:g}s)")
    return f"{where}: {', '.join(uses)}"


def prepare_for(settings: Settings) -> None:
    """Before forking; raises CliError (one line) if the store cannot be used."""
    if not needed(settings):
        return
    try:
        prepare(settings.state)
    except StoreError as exc:
        raise CliError(str(exc)) from None


@dataclass
class Shared:
    store: Guarded
    limits: SharedLimits
    dedupe: Dedupe | None
    rates: RateLimits | None = None
    passes: Passes | None = None

    async def close(self) -> None:
        if self.dedupe is not None:
            await self.dedupe.close()
        if self.passes is not None:
            await self.passes.close()
        if self.rates is not None:
            await self.rates.close()
        await self.limits.close()  # gives back the leases, closes the store


def attach(gateway: Gateway, settings: Settings) -> Shared | None:
    """In a worker: open the store and hand it to ``gateway``, if any rule needs it."""
    if not needed(settings):
        return None
    try:
        store = open_store(settings.state)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    limits = SharedLimits(store, gateway.access, settings.state.lease)
    dedupe = Dedupe(store, settings.dedupe.window) if settings.dedupe.enabled else None
    rates = RateLimits(store)  # also for a rate-limit check a reload adds
    gateway.limits = limits
    gateway.dedupe = dedupe
    gateway.rates = rates
    passes = gateway.passes = Passes(store)  # also for a greeting wait a reload adds
    gateway.set_policy(gateway.policy)  # sessions count rate limits in the store now
    return Shared(store, limits, dedupe, rates, passes)
