"""Each setting is declared once, in the schema: serve's flags, check-config, the
docs and the reload's restart list are drawn from it (config/keys.py)."""

from __future__ import annotations

import argparse
import typing

from smtpguard.cli import build_parser, subparser
from smtpguard.config import keys
from smtpguard.config.docs import render
from smtpguard.config.load import PATH_KEYS, load
from smtpguard.config.render import NOT_SET, to_data, to_text
from smtpguard.core.policy import Balance
from smtpguard.gateway.flags import dest, overrides
from smtpguard.gateway.reload import gateway_fields, restart_changes
from smtpguard.gateway.server import GatewayConfig, Reload
from smtpguard.proxyproto import ProxyVersion


def _serve() -> argparse.ArgumentParser:
    return subparser(build_parser(), "serve")


def test_every_flag_is_the_schema_s_with_its_choices_and_default() -> None:
    actions = {a.dest: a for a in _serve()._actions}
    for key in keys.flagged():
        assert key.flag is not None
        action = actions[dest(key)]
        assert key.flag.name in action.option_strings
        want = keys.choices(key.value_type)
        if want is not None and key.path != ("banner",):
            assert tuple(action.choices or ()) == want, key.dotted
        default = keys.default(key)
        if isinstance(default, int | float) and not isinstance(default, bool) and default:
            assert f"{default:g}" in (action.help or ""), key.dotted


def test_a_flag_overrides_its_key_as_the_enum() -> None:
    args = _serve().parse_args(["--max-sessions", "7", "--upstream-proxy", "v2"])
    s = load(None, overrides(args))
    assert s.gateway.max_sessions == 7
    assert s.gateway.upstream_proxy_protocol is ProxyVersion.V2


def test_check_config_shows_every_table_of_the_gateway() -> None:
    s = load(None)
    data, text = to_data(s), to_text(s)
    for table in keys.walk():
        if (
            table.section is None
            or len(table.path) != 1
            or table.name
            in (
                "checks",
                "timeouts",
                "emulation",
            )
        ):
            continue
        for key in keys.walk(table.section, table.path):
            assert key.name in data[table.name], key.dotted
    assert "\nstate\n" in text and "\ndedupe\n" in text


def test_docs_name_every_flag_and_restart_key() -> None:
    text = render()
    for key in keys.flagged():
        assert key.flag is not None and f"`{key.flag.name}" in text
    for key in keys.restart_keys():
        assert key.dotted in text


def test_reload_reports_restart_keys_and_carries_the_rest() -> None:
    first = load(None)
    new = load(None, [(("gateway", "listen"), "127.0.0.1:2600", "--listen")])
    assert restart_changes(first, new) == ("gateway.listen",)
    assert restart_changes(first, first) == ()
    carried = gateway_fields(Reload, first)
    assert carried == {
        "max_sessions": 1000,
        "drain_grace": 30.0,
        "upstream_policy": Balance.FAILOVER,
        "upstream_check_interval": 0.0,
        "upstream_fail_limit": 3,
        "upstream_backoff": 30.0,
    }
    # What the gateway takes from [gateway] and a reload does not carry needs a restart.
    not_carried = set(gateway_fields(GatewayConfig, first)) - set(carried)
    assert not_carried == {"listen_backlog"}
    assert not_carried <= {k.name for k in keys.restart_keys() if k.path[0] == "gateway"}
    assert typing.get_type_hints(Reload)  # the names above are Reload's own fields


def test_path_keys_and_unset_meanings_come_from_the_schema() -> None:
    """A key that names a file or directory is marked FILE_PATH (so a relative
    value in a config file resolves against the file's directory), and the loader's
    list is exactly the marked keys; check-config's "(not set: …)" texts are the
    schema's Unset markers."""
    named = {
        k.path
        for k in keys.walk()
        if k.section is None and k.name.endswith(("file", "path", "dir", "directory"))
    }
    assert named <= set(PATH_KEYS)
    assert set(PATH_KEYS) == {k.path for k in keys.walk() if k.file_path}
    assert ("gateway", "maildir") in PATH_KEYS
    assert NOT_SET["upstream"] == "(not set: the built-in mailbox)"
    assert all(k.unset == NOT_SET.get(k.name, "(not set)") for k in keys.walk())
