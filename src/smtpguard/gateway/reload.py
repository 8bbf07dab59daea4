"""SIGHUP: re-read the config file with the same flags and hand the gateway what a
running process can apply.

Keys the schema marks :data:`~smtpguard.config.schema.RESTART` (the listeners, the
processes, the Maildir, the protocol log, the shared store) keep their running
values, and so does ``upstream`` when it is set or unset (the built-in mailbox);
a reload that changes one names it in the log (:func:`restart_changes`). The rest
applies to sessions that start afterwards: the policy, the access rules, the list
of upstream servers (connections open stay where they are), and every
``[gateway]`` key that the gateway's :class:`~smtpguard.gateway.server.Reload`
carries (:func:`gateway_fields`).
Certificates are re-read, so a renewal needs no restart; one that does not load
refuses the whole reload.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import ssl
import sys
from collections.abc import Callable
from typing import Any

from smtpguard.applog import LOGGER
from smtpguard.config import keys
from smtpguard.config.load import Settings, effective_log_level, load
from smtpguard.errors import ConfigError
from smtpguard.gateway.flags import overrides
from smtpguard.gateway.server import Gateway, Reload
from smtpguard.gateway.startblock import fail_open_warning
from smtpguard.gateway.startup import tls_problem_lines
from smtpguard.gateway.tls import client_context, server_context
from smtpguard.state.ratelimit import uses_rate_limit


def gateway_fields(target: Any, settings: Settings) -> dict[str, Any]:
    """The ``[gateway]`` keys that the dataclass ``target`` (GatewayConfig, Reload)
    has a field of the same name for, with their values in ``settings``."""
    section = settings.gateway
    return {
        f.name: getattr(section, f.name)
        for f in dataclasses.fields(target)
        if f.name in type(section).model_fields
    }


def restart_changes(first: Settings, new: Settings) -> tuple[str, ...]:
    """The restart-only keys and tables whose value differs, as the file names them."""
    return tuple(
        k.dotted
        for k in keys.restart_keys()
        if keys.get(new.file, k.path) != keys.get(first.file, k.path)
    )


def reloader(args: argparse.Namespace, first: Settings, gateway: Gateway) -> Callable[[], Reload]:
    def reload() -> Reload:
        new = load(args.config, overrides(args))  # ConfigError: the caller keeps the old
        reload_tls(gateway, new)  # ConfigError too: nothing was changed yet
        # smtpguard's own logger: it has its own level and does not propagate.
        logging.getLogger(LOGGER).setLevel(effective_log_level(new, sys.stderr.isatty()).upper())
        if new.policy.xclient and new.policy.xclient_fail_open:  # as the start-up block says
            logging.getLogger(LOGGER).warning(fail_open_warning())
        ignored = restart_changes(first, new)
        upstreams = new.upstreams
        if bool(upstreams) != bool(first.upstreams):  # to or from the built-in mailbox
            ignored += ("gateway.upstream (to or from the built-in mailbox)",)
            upstreams = ()
        if gateway.rates is None and uses_rate_limit(new.policy):
            ignored += ("a rate-limit check (counts per session until the store is opened)",)
        return Reload(
            policy=new.policy,
            access=new.access,
            needs_restart=ignored,
            upstreams=upstreams,
            **gateway_fields(Reload, new),
        )

    return reload


def reload_tls(gateway: Gateway, new: Settings) -> None:
    """Load the (possibly renewed) certificate into the running server context, so
    STARTTLS and the implicit-TLS port both use it for new handshakes, and rebuild
    the upstream side. A file that does not load refuses the whole reload."""
    tls, t = gateway.tls, new.tls
    if tls is None:
        return
    try:
        if t.certfile and tls.server is not None:
            server_context(t.certfile, t.keyfile)  # check it loads before touching anything
            tls.server.load_cert_chain(t.certfile, t.keyfile)
        client = client_context(t.verify_upstream, t.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(*tls_problem_lines(new, exc)) from None
    gateway.tls = dataclasses.replace(tls, client=client)
