"""``[screen]`` and ``[checks.received_count]`` as read from a config file: every key
reaches the policy the sessions run on, defaults included; a wrong value is one
FILE:LINE error naming the values it may take."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.config.load import load
from smtpguard.core import policy as core
from smtpguard.errors import ConfigError

ALL = """\
[screen]
non_smtp = false
non_smtp_action = "log"
pipelining = true
pipelining_action = "drop-connection"
error_limit = 7
error_delay = 1.5
error_delay_cap = 9.0
greet_wait = 2.0
pregreet_action = "log"
pass_ttl = 600.0

[checks.received_count]
action = "drop-connection"
limit = 40
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "smtpguard.toml"
    path.write_text(text)
    return str(path)


def test_every_screen_key_reaches_the_policy(tmp_path: Path) -> None:
    p = load(write(tmp_path, ALL)).policy
    assert p.screen == core.Screens(
        non_smtp=False,
        non_smtp_action=core.ScreenAction.LOG,
        pipelining=True,
        pipelining_action=core.ScreenAction.DROP,
        error_limit=7,
        error_delay=1.5,
        error_delay_cap=9.0,
        greet_wait=2.0,
        pregreet_action=core.ScreenAction.LOG,
        pass_ttl=600.0,
    )
    assert p.checks.received_count == core.Check(core.Verdict.DROP, 40)


def test_defaults_are_the_cores(tmp_path: Path) -> None:
    p = load(write(tmp_path, "")).policy
    assert p.screen == core.Screens()
    assert p.checks.received_count == core.Check(core.Verdict.REJECT, 100)
    off = load(write(tmp_path, "[checks.received_count]\nlimit = 0\n")).policy
    assert not off.checks.received_count.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[screen]\nnon_smtp_action = "reject"\n',
            'smtpguard.toml:2: screen.non_smtp_action: got "reject", expected one of '
            '"drop-connection", "log"',
        ),
        (
            '[screen]\npipelining_action = "reset"\n',
            'smtpguard.toml:2: screen.pipelining_action: got "reset", expected one of '
            '"reject", "drop-connection", "log"',
        ),
        ("[screen]\ngreet_wait = -1.0\n", "smtpguard.toml:2: screen.greet_wait: got -1.0"),
        ("[screen]\nerror_limit = 2.5\n", "smtpguard.toml:2: screen.error_limit: got 2.5"),
        ("[screen]\ngreet_wiat = 2.0\n", "smtpguard.toml:2: screen.greet_wiat"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert message in str(err.value), str(err.value)
