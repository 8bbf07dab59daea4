"""``xclient_fail_open``: declared in the schema, set by the file or ``--xclient-fail-open``,
off by default (a refused XCLIENT refuses the client; tests/core/test_tls_xclient.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.cli import build_parser
from smtpguard.config.load import load
from smtpguard.errors import ConfigError
from smtpguard.gateway.flags import overrides
from tests.gateway.test_serve_config import Serve
from tests.peers import SmtpSink


def test_off_by_default() -> None:
    assert load(None).policy.xclient_fail_open is False


def test_set_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "smtpguard.toml"
    path.write_text("xclient = true\nxclient_fail_open = true\n")
    policy = load(str(path)).policy
    assert policy.xclient and policy.xclient_fail_open


def test_strictly_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "smtpguard.toml"
    path.write_text('xclient_fail_open = "yes"\n')
    with pytest.raises(ConfigError, match=r"smtpguard\.toml:1: xclient_fail_open: got"):
        load(str(path))


def test_the_serve_flag_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "smtpguard.toml"
    path.write_text("xclient = true\nxclient_fail_open = false\n")
    args = build_parser().parse_args(["serve", "--xclient-fail-open"])
    assert load(str(path), overrides(args)).policy.xclient_fail_open
    plain = build_parser().parse_args(["serve"])
    assert not load(str(path), overrides(plain)).policy.xclient_fail_open


def test_a_reload_that_turns_it_on_warns(tmp_path: Path) -> None:
    """The start-up block warns about xclient_fail_open; a SIGHUP that turns it on
    logs the same warning."""
    sink = SmtpSink(tmp_path)
    base = f'xclient = true\n[gateway]\nupstream = "{sink.address}"\n'
    cfg = tmp_path / "gw.toml"
    cfg.write_text(base)
    g = Serve(cfg)
    try:
        assert not [ln for ln in g.lines if "mynetworks" in ln]
        hits = g.reload("xclient_fail_open = true\n" + base, "xclient_fail_open = true")
        assert "mynetworks" in hits[0] and "WARNING" in hits[0]
    finally:
        g.stop()
        sink.stop()
