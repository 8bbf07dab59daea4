"""Pattern checks use search semantics, as the docs say with examples that run here
(issue 23: with ``fullmatch`` the shipped ``\\.(exe|…)$`` never fired)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.config.docs import PATTERN_EXAMPLES
from smtpguard.config.load import load
from smtpguard.config.safety import _end_anchored
from smtpguard.core.checks import pattern_fires
from smtpguard.core.policy import PatternCheck
from smtpguard.errors import ConfigError
from tests.core.harness import converse
from tests.core.test_checks import esmtp, multipart

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(("check", "patterns", "allow", "value", "fires"), PATTERN_EXAMPLES)
def test_documented_examples_are_what_the_check_does(
    check: str, patterns: tuple[str, ...], allow: bool, value: str, fires: bool
) -> None:
    assert pattern_fires(PatternCheck(patterns=patterns, allow=allow), value) is fires


def test_the_documented_examples_are_in_the_reference() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    for _check, _patterns, _allow, value, _fires in PATTERN_EXAMPLES:
        assert f"`{value}`" in text


def test_the_shipped_example_refuses_invoice_exe() -> None:
    """The regression: examples/smtpguard.toml's file-name pattern is searched."""
    policy = load(str(ROOT / "examples" / "smtpguard.toml")).policy
    check = policy.checks.mime_filename_pattern
    assert pattern_fires(check, "invoice.exe")
    assert not pattern_fires(check, "invoice.pdf")
    # ... and through a session, in a real MIME part.
    run = converse(multipart("invoice.exe"), policy=esmtp(mime_filename_pattern=check))
    assert b"554 5.7.1 Message refused: attachment type not allowed" in run.client_out


@given(st.text(max_size=30), st.text(max_size=30))
def test_search_semantics_are_re_search(pattern_text: str, value: str) -> None:
    pattern = re.escape(pattern_text)
    deny = PatternCheck(patterns=(pattern,))
    allow = PatternCheck(patterns=(pattern,), allow=True)
    hit = re.search(pattern, value, re.IGNORECASE) is not None
    assert pattern_fires(deny, value) is hit
    assert pattern_fires(allow, value) is not hit


@pytest.mark.parametrize(
    ("pattern", "anchored"),
    [
        (r"^example\.net$", True),
        (r"\.example\.net$", True),
        (r"example\.net\Z", True),
        (r"example\.net", False),
        (r"example\.net\$", False),  # an escaped dollar is a character
        (r"example\.net\\$", True),  # an escaped backslash, then the anchor
        (r"^example\.net", False),
    ],
)
def test_end_anchor(pattern: str, anchored: bool) -> None:
    assert _end_anchored(pattern) is anchored


def test_an_unanchored_allow_list_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('mode = "esmtp"\n[checks.recipient_domains]\npatterns = ["example\\\\.net"]\n')
    with pytest.raises(ConfigError) as info:
        load(str(path))
    msg = str(info.value)
    assert ":3: checks.recipient_domains.patterns" in msg and "anchored at the end" in msg
    # A deny list may be unanchored (it only fires more often), and so may an
    # allow list that is anchored.
    path.write_text(
        '[checks.sender_pattern]\npatterns = ["spam"]\n'
        '[checks.recipient_domains]\npatterns = ["^example\\\\.net$"]\n'
    )
    load(str(path))
