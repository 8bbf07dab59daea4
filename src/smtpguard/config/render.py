"""The effective settings, for people (``check-config``) and as JSON (``--json``)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from smtpguard.config.load import Settings
from smtpguard.core import policy as core


def to_data(settings: Settings) -> dict[str, Any]:
    """Plain JSON-ready data: enums as their values, sets sorted, networks as text."""
    return {
        "source": settings.source,
        "gateway": {
            "listen": _hostport(settings.listen),
            "upstream": _hostport(settings.upstream) if settings.upstream else None,
            "workers": settings.workers,
            "max_sessions": settings.max_sessions,
            "drain_grace": settings.drain_grace,
            "maildir": settings.maildir,
            "upstream_proxy_protocol": settings.upstream_proxy,
            "metrics_listen": (
                _hostport(settings.metrics_listen) if settings.metrics_listen else None
            ),
            "log_format": settings.log_format,
            # None: not set, warning (info when stderr is a terminal)
            "log_level": settings.log_level_set,
        },
        "protocol_log": {
            "path": settings.protocol_log,
            "format": settings.protocol_log_format,
        },
        "tls": dataclasses.asdict(settings.tls),
        "access": _plain(dataclasses.asdict(settings.access)),
        "policy": _plain(_policy_dict(settings.policy)),
    }


def to_text(settings: Settings) -> str:
    data = to_data(settings)
    lines = [f"{settings.source or 'defaults'}: valid", ""]
    pol = data.pop("policy")
    checks = pol.pop("checks")
    data.pop("source")
    lines.append("policy")
    lines += _rows({k: v for k, v in pol.items() if not isinstance(v, dict)})
    for name in ("timeouts", "emulation"):
        lines += ["", name, *_rows(pol[name])]
    lines += ["", "checks"]
    for name, spec in checks.items():
        lines.append(f"  {name:<26} {_check_text(spec)}")
    for name, section in data.items():
        lines += ["", name, *_rows(section)]
    return "\n".join(lines)


def _check_text(spec: Any) -> str:
    if isinstance(spec, str):  # special_characters
        return spec
    if "limit" in spec:
        if spec["limit"] is None:
            return "off"
        text = f"> {spec['limit']}: {spec['action']}"
        if spec["action"] == core.Verdict.RATE_LIMIT.value:
            text += f" ({spec['rate']} per {spec['period']:g}s)"
        return text
    if not spec["patterns"]:
        return "off"
    how = "none matches" if spec["allow"] else "any matches"
    return f"{spec['action']} when {how} of {', '.join(spec['patterns'])}"


# What a key that is not set means, where "(not set)" would not say it.
NOT_SET = {
    "log_level": "(not set: warning; info, one line per session, when stderr is a terminal)",
    "upstream": "(not set: the built-in mailbox)",
    "metrics_listen": "(not set: no metrics endpoint)",
}


def _rows(section: dict[str, Any]) -> list[str]:
    out = []
    for key, value in section.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "(none)"
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif value == "":
            value = '""'
        elif value is None:
            value = NOT_SET.get(key, "(not set)")
        out.append(f"  {key:<26} {value}")
    return out


def _policy_dict(policy: core.Policy) -> dict[str, Any]:
    # asdict() recurses into the nested dataclasses (checks, timeouts, emulation).
    return dataclasses.asdict(policy)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # networks


def _hostport(hp: tuple[str, int]) -> str:
    host, port = hp
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
