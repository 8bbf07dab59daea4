"""Loading, validation and the one-line error messages."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.config import schema
from smtpguard.config.load import load
from smtpguard.core import policy as core
from smtpguard.errors import ConfigError

ROOT = Path(__file__).parents[2]


def write(tmp_path: Path, text: str, name: str = "smtpguard.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def error_of(path: str | None, overrides: Any = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# -- valid files ---------------------------------------------------------------------------


def test_no_file_gives_the_built_in_policy() -> None:
    s = load(None)
    assert dataclasses.replace(s.policy, hostname="x") == core.Policy(hostname="x")
    assert s.listen == ("127.0.0.1", 2525) and s.upstream is None
    assert s.workers == (os.cpu_count() or 1) and s.gateway.max_sessions == 1000


def test_example_file_is_valid_and_sets_what_it_says() -> None:
    s = load(str(ROOT / "examples" / "smtpguard.toml"))
    p = s.policy
    assert p.mode is core.Mode.ESMTP and p.allowed_verbs == core.ESMTP_VERBS
    assert p.hostname == "mx.example.com"
    assert p.checks.header_size.limit is None  # limit = 0: off
    assert p.checks.invalid_recipients == core.Check(core.Verdict.RATE_LIMIT, 20, 5, 60.0)
    assert p.checks.mime_filename_pattern.patterns
    assert s.access.deny == (ipaddress.ip_network("192.0.2.0/24"),)
    assert s.access.max_sessions_per_ip == 20


def test_partial_check_keeps_its_default_action(tmp_path: Path) -> None:
    s = load(write(tmp_path, "[checks.rcpt_count]\nlimit = 50\n"))
    assert s.policy.checks.rcpt_count == core.Check(core.Verdict.DROP, 50)
    assert s.policy.checks.sender_length == core.Checks().sender_length


def test_mode_sets_default_verbs_and_explicit_list_wins(tmp_path: Path) -> None:
    assert load(write(tmp_path, 'mode = "esmtp"\n')).policy.allowed_verbs == core.ESMTP_VERBS
    s = load(write(tmp_path, 'mode = "esmtp"\nallowed_verbs = ["helo", "Mail", "QUIT"]\n'))
    assert s.policy.allowed_verbs == {"HELO", "MAIL", "QUIT"}


def test_every_policy_field_is_settable() -> None:
    """The schema mirrors Policy: a new Policy field must get a config key."""

    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    top = set(schema.ConfigFile.model_fields)
    # shared_rates: set by the gateway when it has a shared store; dedupe_answer: [dedupe];
    # upstream_tries: one per server of [gateway] upstream.
    derived = {"shared_rates", "dedupe_answer", "upstream_tries"}
    assert names(core.Policy) - derived <= top, names(core.Policy) - derived - top
    assert names(core.Checks) == set(schema.Checks.model_fields)
    assert names(core.Check) == set(schema.LimitCheck.model_fields)
    assert names(core.PatternCheck) == set(schema.PatternCheck.model_fields)
    assert names(core.Timeouts) == set(schema.TimeoutsSection.model_fields)
    assert names(core.Emulation) == set(schema.EmulationSection.model_fields)


def test_non_default_values_reach_the_policy(tmp_path: Path) -> None:
    text = """\
mode = "esmtp"
ehlo_keywords = ["size", "PIPELINING"]
banner = "custom"
banner_text = "welcome"
smuggling = "normalize"
starttls = "passthrough"
max_pending = 7
bdat_drain_limit = 0
[timeouts]
connect = 5
[emulation]
pix = true
rewrite = "xxxx"
[checks]
special_characters = "log"
[checks.sender_pattern]
patterns = ["^spam@"]
[checks.message_size]
action = "rate-limit"
limit = 1000
rate = 2
period = 10
"""
    p = load(write(tmp_path, text)).policy
    assert p.ehlo_keywords == {"SIZE", "PIPELINING"}
    assert (p.banner, p.banner_text) == (core.BannerPolicy.CUSTOM, "welcome")
    assert p.smuggling is core.Smuggling.NORMALIZE and p.starttls is core.StartTls.PASSTHROUGH
    assert (p.max_pending, p.bdat_drain_limit) == (7, 0)
    assert p.timeouts.connect == 5.0 and p.timeouts.greeting == core.Timeouts().greeting
    assert p.emulation == core.Emulation(pix=True, rewrite=core.PixRewrite.XXXX)
    assert p.checks.special_characters is core.Verdict.LOG
    assert p.checks.sender_pattern == core.PatternCheck(patterns=("^spam@",))
    assert p.checks.message_size == core.Check(core.Verdict.RATE_LIMIT, 1000, 2, 10.0)


def test_a_pattern_check_takes_a_rate_limit(tmp_path: Path) -> None:
    text = '[checks.sender_pattern]\naction = "rate-limit"\npatterns = ["^bulk@"]\nrate = 5\n'
    p = load(write(tmp_path, text + "period = 3600\n")).policy
    assert p.checks.sender_pattern == core.PatternCheck(
        core.Verdict.RATE_LIMIT, ("^bulk@",), rate=5, period=3600.0
    )


# -- overrides -------------------------------------------------------------------------------


def test_flags_override_the_file_and_only_given_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nlisten = "127.0.0.1:2600"\nworkers = 3\n')
    s = load(path, [(("gateway", "workers"), 1, "--workers")])
    assert s.workers == 1 and s.listen == ("127.0.0.1", 2600)


def test_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nworkers = 3\n")
    msg = error_of(path, [(("gateway", "max_sessions"), 0, "--max-sessions")])
    assert msg == "--max-sessions: got 0, expected an integer >= 1"


# -- errors ------------------------------------------------------------------------------------


def test_the_issue_example(tmp_path: Path) -> None:
    text = "\n" * 11 + '[checks.rcpt_count]\naction = "reject"\nlimit = "lots"\n'
    msg = error_of(write(tmp_path, text))
    assert msg.endswith(
        'smtpguard.toml:14: checks.rcpt_count.limit: got "lots", expected an integer >= 0'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('mode = "esmpt"', ':1: mode: got "esmpt", expected one of "mailguard", "esmtp"'),
        ("workers = 2", ':1: workers: unknown key (did you mean "gateway.workers"?)'),
        (
            '[gateway]\nlisten = "nowhere"',
            ':2: gateway.listen: got "nowhere", expected "HOST:PORT"',
        ),
        ("[gateway]\nworkers = -1", ":2: gateway.workers: got -1, expected an integer >= 0"),
        ("[gateway]\nworkers = 1.5", ":2: gateway.workers: got 1.5, expected an integer >= 0"),
        ("[gateway]\nworkers = true", ":2: gateway.workers: got true, expected an integer >= 0"),
        ("[gateway]\ndrain_grace = -1", ":2: gateway.drain_grace: got -1, expected a number >= 0"),
        ("[timeouts]\nconect = 3", ':2: timeouts.conect: unknown key (did you mean "connect"?)'),
        ("[timeouts]\nconnect = 0", ":2: timeouts.connect: got 0, expected a number > 0"),
        ('[access]\ndeny = [\n "10.0.0.0/8",\n "10.0.0.1/8",\n]', ":4: access.deny[1]: got "),
        ("[checks]\nrcpt_count = 5", ":2: checks.rcpt_count: got 5, expected a table"),
        (
            '[checks.rcpt_count]\naction = "bounce"',
            ':2: checks.rcpt_count.action: got "bounce", '
            'expected one of "reject", "drop-connection", "reset", "log", "rate-limit"',
        ),
        (
            '[checks.sender_pattern]\npatterns = ["(oops"]',
            ":2: checks.sender_pattern.patterns[0]"
            ': got "(oops", expected a valid regular expression',
        ),
        (
            'ehlo_keywords = ["CHUNKING"]',
            ':1: ehlo_keywords[0]: got "CHUNKING", expected an '
            "EHLO keyword that may be allowed (CHUNKING is always stripped)",
        ),
        (
            'allowed_verbs = ["MAIL FROM"]',
            ':1: allowed_verbs[0]: got "MAIL FROM", expected an SMTP command verb',
        ),
        ('banner = "custom"', ':1: banner: got "custom", expected banner_text = "..." set too'),
        ('banner_text = "hi"', ':1: banner_text: got "hi", expected banner = "custom"'),
        (
            '[checks.rcpt_count]\naction = "rate-limit"',
            ':2: checks.rcpt_count.action: got "rate-limit", expected rate = N',
        ),
        (
            "[checks.rcpt_count]\nrate = 3",
            ':2: checks.rcpt_count.rate: got 3, expected it only with action = "rate-limit"',
        ),
        (
            '[checks.sender_pattern]\naction = "rate-limit"\npatterns = ["x"]',
            ':2: checks.sender_pattern.action: got "rate-limit", expected rate = N',
        ),
        (
            "[checks.recipient_domains]\nperiod = 60.0",
            ":2: checks.recipient_domains.period: got 60.0, expected it only with "
            'action = "rate-limit"',
        ),
        (
            '[checks]\nspecial_characters = "rate-limit"',
            ":2: checks.special_characters: got "
            '"rate-limit", expected one of "reject", "drop-connection", "reset", "log"',
        ),
        (
            "[checks.rcpt_count]\nlimt = 3",
            ':2: checks.rcpt_count.limt: unknown key (did you mean "limit"?)',
        ),
        ("[acess]\nallow = []", ':1: acess: unknown key (did you mean "access"?)'),
        (
            '[protocol_log]\nformat = "csv"',
            ':2: protocol_log.format: got "csv", expected one of "ims", "jsonl"',
        ),
        (
            'starttls = "terminate"',
            ':1: starttls: got "terminate", expected a certificate too: '
            'tls.certfile = "FILE" in the config file or --tls-cert FILE',
        ),
        ("[tls]\nverify_upstream = 1", ":2: tls.verify_upstream: got 1, expected true or false"),
        ('hostname = "two words"', ':1: hostname: got "two words", expected a host name'),
    ],
)
def test_errors_name_line_key_value_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text + "\n")
    msg = error_of(path)
    assert msg.startswith(path + ":")
    assert expected in msg, msg


def test_unknown_key_nowhere_close_lists_the_keys(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "[protocol_log]\nzzz = 1\n"))
    assert msg.endswith("protocol_log.zzz: unknown key (expected one of: path, format)")


def test_several_errors_are_all_reported_one_a_line_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[checks.rcpt_count]\nlimit = "x"\n[gateway]\nworkers = -1\nmode_typo = 1\n',
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    lines = str(info.value).splitlines()
    assert list(info.value.lines) == lines
    assert [ln.split(": ")[0] for ln in lines] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert "checks.rcpt_count.limit" in lines[0] and "gateway.workers" in lines[1]
    assert "gateway.mode_typo: unknown key" in lines[2]
    assert "more error" not in str(info.value)


def test_contradictions_found_after_validation_are_all_reported(tmp_path: Path) -> None:
    text = 'starttls = "terminate"\nbanner = "custom"\n[tls]\nimplicit_listen = "127.0.0.1:465"\n'
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    keys = [ln.split(": ")[1] for ln in info.value.lines]
    assert keys == ["starttls", "banner", "tls.implicit_listen"]


def test_a_top_level_key_inside_a_table_says_where_it_belongs(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, '[gateway]\nlisten = "127.0.0.1:25"\nmode = "esmtp"\n'))
    assert msg.endswith(
        ':3: gateway.mode: unknown key: "mode" is a top-level key; move it above the '
        "first [table] header (top-level keys must come before any table)"
    )
    assert "did you mean" not in msg


def test_starttls_terminate_flag_without_certificate_names_flag_and_key() -> None:
    msg = error_of(None, [(("starttls",), "terminate", "--starttls")])  # type: ignore[arg-type]
    assert msg.startswith('--starttls: got "terminate", expected a certificate too')
    assert "--tls-cert FILE" in msg and "tls.certfile" in msg


def test_relative_paths_in_the_file_resolve_against_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    text = (
        '[gateway]\nmaildir = "mail"\n[protocol_log]\npath = "../log/protocol.log"\n'
        '[tls]\ncertfile = "tls/cert.pem"\nkeyfile = "/abs/key.pem"\n'
    )
    path = write(conf, text)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load(path)
    assert s.gateway.maildir == str(conf / "mail")
    assert s.protocol_log.path == str(tmp_path / "log" / "protocol.log")
    assert s.tls.certfile == str(conf / "tls" / "cert.pem") and s.tls.keyfile == "/abs/key.pem"
    # A flag is relative to the current directory, as the user typed it.
    s = load(path, [(("gateway", "maildir"), "here", "--maildir")])
    assert s.gateway.maildir == "here"
    # Without a file the default Maildir stays relative to the current directory.
    assert load(None).gateway.maildir == "./smtpguard-mail"
    # A relative --config path works the same.
    monkeypatch.chdir(tmp_path)
    assert load("etc/smtpguard.toml").gateway.maildir == str(conf / "mail")


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, 'mode = "esmtp"\n[checks\nlimit = 3\n'))
    assert msg.startswith(str(tmp_path / "smtpguard.toml") + ":2:")
    assert "invalid TOML" in msg


def test_toml_error_at_end_of_file(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, 'mode = "esmtp'))
    assert "invalid TOML" in msg and msg.startswith(str(tmp_path / "smtpguard.toml") + ":")


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    assert "cannot read: No such file" in error_of(str(tmp_path / "nope.toml"))
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'mode = "esmtp"\nhostname = "caf\xe9"\n')
    assert error_of(str(p)).endswith("latin1.toml:2: not UTF-8 text (TOML files are UTF-8)")


# -- property: a bad value anywhere is reported at its own line ---------------------------------

INT_KEYS = [
    ("gateway", "workers"),
    ("gateway", "max_sessions"),
    ("access", "max_sessions_per_ip"),
    ("access", "connection_rate"),
    ("checks", "rcpt_count", "limit"),
    ("checks", "header_size", "limit"),
    ("checks", "message_size", "rate"),
    ("max_pending",),
]
bad_values = st.sampled_from(['"lots"', "-3", "1.5", "true", "[1]"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(
    st.sampled_from(INT_KEYS),
    bad_values,
    st.integers(0, 5),
    st.sampled_from(["header", "dotted", "inline"]),
)
def test_bad_value_is_reported_at_its_line(
    tmp_path: Path, key: tuple[str, ...], bad: str, padding: int, style: str
) -> None:
    head = 'mode = "esmtp"\n' + "# filler\n" * padding
    if len(key) == 1:
        text = head + f"{key[0]} = {bad}\n"
    elif style == "header":
        text = head + f"[{'.'.join(key[:-1])}]\n# x = 1\n{key[-1]} = {bad}\n"
    elif style == "dotted":
        text = head + f"[{key[0]}]\n{'.'.join(key[1:])} = {bad}\n"
    else:
        inner = f"{key[-1]} = {bad}"
        for k in reversed(key[1:-1]):
            inner = f"{k} = {{ {inner} }}"
        text = head + f"[{key[0]}]\n{inner}\n"
    tomllib.loads(text)
    bad_line = len(text.splitlines())
    path = write(tmp_path, text)
    msg = error_of(path)
    assert msg.startswith(f"{path}:{bad_line}: {'.'.join(key)}"), (text, msg)
    assert "expected an integer" in msg
