"""The effective settings, for people (``check-config``) and as JSON (``--json``)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from smtpguard.config import keys
from smtpguard.config.load import Settings, split_hostport
from smtpguard.core import policy as core


def to_data(settings: Settings) -> dict[str, Any]:
    """Plain JSON-ready data: every key of the gateway's own tables as the schema
    declares them (addresses as ``HOST:PORT``, ``workers`` as the count that runs),
    then the effective policy. Enums as their values, sets sorted, networks as text."""
    out: dict[str, Any] = {"source": settings.source}
    for table in keys.walk():
        if table.section is None or len(table.path) != 1 or table.path[0] in POLICY_TABLES:
            continue
        out[table.name] = {
            key.name: _plain(_shown(settings, key)) for key in keys.walk(table.section, table.path)
        }
    out["policy"] = _plain(_policy_dict(settings.policy))
    return out


# Tables whose keys are the policy's: shown under "policy", as the gateway runs them.
POLICY_TABLES = frozenset({"checks", "timeouts", "emulation"})


def _shown(settings: Settings, key: keys.Key) -> Any:
    if key.path == ("gateway", "workers"):
        return settings.workers  # 0 (one per CPU core) resolved
    if key.path == ("state", "directory"):
        return settings.state.directory  # not set: the per-user state directory
    value = keys.get(settings.file, key.path)
    if isinstance(value, str) and value and keys.is_hostport(key):
        return _hostport(split_hostport(value))
    if isinstance(value, list) and keys.is_hostport(key):
        return [_hostport(split_hostport(v)) for v in value]
    return value


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


# What a key that is not set means, where the schema says more than "(not set)".
NOT_SET = {k.name: k.unset for k in keys.walk() if k.unset != "(not set)"}


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
