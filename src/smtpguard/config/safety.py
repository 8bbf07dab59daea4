"""Settings that are valid one by one but open a hole together, refused at load time.

Each rule names the key to change and why the pair is unsafe; ``load`` reports them
with the file and line like any other configuration error.
"""

from __future__ import annotations

import ipaddress

from smtpguard.config import schema
from smtpguard.core import policy as core

# Verbs a client must never be able to send to a server that trusts the gateway:
# they make the server take the client's word for who the client is.
IDENTITY_VERBS = frozenset({"XCLIENT", "XFORWARD"})

Problem = tuple[tuple[str, ...], object, str]  # (key path, value, what is expected)


def unsafe_combinations(cfg: schema.ConfigFile) -> list[Problem]:
    found: list[Problem] = []
    if cfg.starttls is core.StartTls.PASSTHROUGH and cfg.xclient:
        # Inside the tunnel the gateway reads nothing: a client could send its own
        # XCLIENT to a server that trusts the gateway's address for it.
        found.append(
            (
                ("xclient",),
                True,
                'false with starttls = "passthrough" (inside the TLS tunnel a client could '
                'send its own XCLIENT), or starttls = "terminate"',
            )
        )
    verbs = set(cfg.allowed_verbs or ())
    identity = sorted(verbs & IDENTITY_VERBS)
    if identity:
        found.append(
            (
                ("allowed_verbs",),
                cfg.allowed_verbs,
                f"a list without {', '.join(identity)} (a client could tell the server "
                "any address it likes; use xclient = true for the real one)",
            )
        )
    if "STARTTLS" in verbs and cfg.starttls in (None, core.StartTls.STRIP):
        found.append(
            (
                ("allowed_verbs",),
                cfg.allowed_verbs,
                'a list without STARTTLS: it is governed by starttls = "passthrough" or '
                '"terminate" (relayed as a plain command it would end inspection unnoticed)',
            )
        )
    for text in cfg.access.proxy_protocol_from:
        net = ipaddress.ip_network(str(text), strict=False)
        if net.prefixlen == 0:
            found.append(
                (
                    ("access", "proxy_protocol_from"),
                    str(text),
                    "the load balancers' own networks, not every address (any client "
                    "could send a PROXY header and claim any address)",
                )
            )
    found += _unanchored_allow_lists(cfg)
    return found


def _end_anchored(pattern: str) -> bool:
    """Whether every match of ``pattern`` must end at the value's end: a trailing
    ``$`` or ``\\Z`` that is not escaped."""
    for anchor in ("$", "\\Z"):
        if pattern.endswith(anchor):
            stem = pattern[: -len(anchor)]
            backslashes = len(stem) - len(stem.rstrip("\\"))
            if backslashes % 2 == 0:
                return True
    return False


def _unanchored_allow_lists(cfg: schema.ConfigFile) -> list[Problem]:
    """An allow-list pattern is searched (core/checks.py): ``example\\.net`` would also
    allow ``example.net.evil.test``. Each one must say where the value ends."""
    found: list[Problem] = []
    defaults = core.Checks()
    for name in schema.Checks.model_fields:
        section = getattr(cfg.checks, name)
        if not isinstance(section, schema.PatternCheck):
            continue
        allow = section.allow
        if allow is None:
            allow = getattr(defaults, name).allow
        if not allow:
            continue
        for pattern in section.patterns or ():
            if not _end_anchored(pattern):
                found.append(
                    (
                        ("checks", name, "patterns"),
                        pattern,
                        f"an allow-list pattern anchored at the end, e.g. '{pattern}$' "
                        "(patterns are searched: without $ it also allows any value that "
                        "merely contains a match, such as 'example.net.evil.test')",
                    )
                )
    return found
