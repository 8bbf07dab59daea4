"""docs/config.md is generated from the schema and current; the example covers every key."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel

from smtpguard.config import schema
from smtpguard.config.docs import render

ROOT = Path(__file__).parents[2]


def _keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _keys(sub, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def test_docs_config_md_is_current() -> None:
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == render(), (
        "docs/config.md is stale: run python -m smtpguard.config.docs > docs/config.md"
    )


def test_docs_name_every_key() -> None:
    text = render()
    for key in _keys(schema.ConfigFile):
        assert f"`{key[-1]}`" in text, key


def test_example_sets_every_key() -> None:
    data = tomllib.loads((ROOT / "examples" / "smtpguard.toml").read_text())
    missing = []
    for key in _keys(schema.ConfigFile):
        node = data
        for part in key:
            if not isinstance(node, dict) or part not in node:
                missing.append(".".join(key))
                break
            node = node[part]
    # Keys whose default is "not set" appear commented out in the example; rate and
    # period are only valid with action = "rate-limit", shown on one check.
    commented = {
        "gateway.upstream",
        "gateway.pid_file",
        "protocol_log.path",
        "tls.certfile",
        "tls.keyfile",
        "tls.cafile",
        "tls.implicit_listen",
        "state.directory",
    }
    rate_keys = {m for m in missing if m.endswith((".rate", ".period"))}
    assert "checks.invalid_recipients.rate" not in rate_keys
    assert "checks.invalid_recipients.period" not in rate_keys
    assert set(missing) - rate_keys == commented, (set(missing) - rate_keys) ^ commented
    text = (ROOT / "examples" / "smtpguard.toml").read_text()
    assert "# upstream = " in text and "# path = " in text
