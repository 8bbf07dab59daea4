"""CLI contract: arguments, exit codes, --no-send, STARTTLS, IPv6 loopback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from smtpguard.probe.cli import parse_target
from tests.probe.conftest import free_port, smtp_sink, tls_context
from tests.probe.fakes import RFC821, SEED_BANNER, Behaviour, FakeSmtpServer
from tests.probe.harness import FAST, run_probe_cli

pytestmark = pytest.mark.standalone


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mx.example", ("mx.example", 25)),
        ("mx.example:2525", ("mx.example", 2525)),
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("[::1]:2525", ("::1", 2525)),
        ("[::1]", ("::1", 25)),
        ("::1", ("::1", 25)),
    ],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "host:99999"],
        ["probe", "host:smtp"],
        ["probe", ":25"],
        ["probe", "[::1"],
        ["probe", "host", "--timeout", "0"],
        ["probe", "host", "--gap", "-1"],
        ["probe", "host", "--to", "<a@b>"],
        ["probe", "host", "--from", "a b@c"],
        ["probe", "host", "--to", ""],
        ["probe", "host", "--auth-user", "u", "--auth-pass", "p"],  # never in clear
        ["probe", "host", "--tls", "--implicit-tls"],
        ["probe", "host:465", "--tls"],
        ["probe", "host", "--no-send", "--maildir", "."],
        ["probe", "host", "--maildir", "/nonexistent/dir"],
        ["probe", "host", "--delivery-timeout", "0"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_probe_cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("smtpguard probe: error: ")
    assert "Traceback" not in captured.err


def test_connection_refused_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there any more
    assert run_probe_cli(["probe", f"127.0.0.1:{port}", "--timeout", "10"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot connect to 127.0.0.1:{port}" in captured.err
    assert captured.err.count("\n") == 1


def test_connection_error_with_json_still_prints_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 16: scripts that parse --json always get a JSON object."""
    port = free_port()
    assert run_probe_cli(["probe", f"127.0.0.1:{port}", "--json", "--timeout", "10"]) == 2
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["verdict"] == "error"
    assert doc["target"] == f"127.0.0.1:{port}"
    assert f"cannot connect to 127.0.0.1:{port}" in doc["error"]
    assert captured.err.count("\n") == 1


def test_bad_option_value_with_json_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_probe_cli(["probe", "127.0.0.1:25", "--json", "--auth-user", "u"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "error" and "--auth-pass" in doc["error"]


def test_refusing_greeting_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeSmtpServer(Behaviour(banner=b"554 5.7.1 go away\r\n")) as (host, port):
        assert run_probe_cli(["probe", f"{host}:{port}", "--timeout", "10"]) == 2
    assert "refuses the session: 554 5.7.1 go away" in capsys.readouterr().err


def test_silent_server_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert run_probe_cli(["probe", f"127.0.0.1:{port}", "--timeout", "1"]) == 2
    assert "no greeting" in capsys.readouterr().err


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour(), Behaviour(allowed=RFC821, banner=SEED_BANNER, disallowed="noop")],
    ids=["clean", "pix-noop"],
)
def test_no_send_never_starts_data(
    behaviour: Behaviour, capsys: pytest.CaptureFixture[str]
) -> None:
    server = FakeSmtpServer(behaviour)
    with server as (host, port):
        run_probe_cli(["probe", f"{host}:{port}", "--no-send", "--json", "--timeout", "10"])
    report = json.loads(capsys.readouterr().out)
    assert "DATA" not in server.record.verbs
    assert server.record.messages == 0
    assert report["split_terminator"] == "untested"
    assert set(report["smuggling"].values()) == {"untested"}
    verdicts = {c["id"]: c["verdict"] for c in report["checks"]}
    assert verdicts["control-message"] == verdicts["split-terminator"] == "skipped"
    assert verdicts["smuggling"] == "skipped"


def test_sending_run_delivers_control_split_and_variants(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = FakeSmtpServer(Behaviour())
    with server as (host, port):
        assert run_probe_cli(["probe", f"{host}:{port}", "--json", "--timeout", "20", *FAST]) == 0
    capsys.readouterr()
    # control + split + two pipelined + one message per smuggling variant, each whole
    assert server.record.messages == 2 + 2 + 12


@pytest.mark.e2e
def test_refused_recipient_skips_data_checks(capsys: pytest.CaptureFixture[str]) -> None:
    with smtp_sink("-f", "RCPT") as (host, port):  # hard-rejects every RCPT
        code = run_probe_cli(["probe", f"{host}:{port}", "--json", "--timeout", "20", *FAST])
    report = json.loads(capsys.readouterr().out)
    verdicts = {c["id"]: c for c in report["checks"]}
    assert verdicts["control-message"]["verdict"] == "skipped"
    assert "refused RCPT" in verdicts["control-message"]["detail"]
    assert "--from/--to" in verdicts["control-message"]["detail"]
    assert report["split_terminator"] == "untested"
    assert code == 0


def test_starttls_handshake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ehlo = b"250-fake.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
    behaviour = Behaviour(ehlo=ehlo, tls=tls_context(tmp_path))
    with FakeSmtpServer(behaviour) as (host, port):
        code = run_probe_cli(
            ["probe", f"{host}:{port}", "--tls", "--no-send", "--json", "--timeout", "20"]
        )
        report = json.loads(capsys.readouterr().out)
        check = next(c for c in report["checks"] if c["id"] == "starttls")
        assert check["verdict"] == "ok", check
        assert "TLSv1." in check["detail"]
        assert code == 0
        # without --tls it is only reported as offered
        run_probe_cli(["probe", f"{host}:{port}", "--no-send", "--json", "--timeout", "20"])
        report = json.loads(capsys.readouterr().out)
        check = next(c for c in report["checks"] if c["id"] == "starttls")
        assert check["verdict"] == "info" and "offered" in check["detail"]


def test_tls_requested_but_not_offered(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeSmtpServer(Behaviour()) as (host, port):
        code = run_probe_cli(
            ["probe", f"{host}:{port}", "--tls", "--no-send", "--json", "--timeout", "20"]
        )
    report = json.loads(capsys.readouterr().out)
    check = next(c for c in report["checks"] if c["id"] == "starttls")
    assert check["verdict"] == "problem"
    assert code == 1


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback in this sandbox")
def test_ipv6_loopback_target(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeSmtpServer(Behaviour(), host="::1") as (_, port):
        code = run_probe_cli(["probe", f"[::1]:{port}", "--no-send", "--json", "--timeout", "20"])
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == f"[::1]:{port}"
    assert code == 0


def test_top_level_cli_dispatches_to_probe(capsys: pytest.CaptureFixture[str]) -> None:
    """Through `smtpguard.cli.main`, once every sub-command package is importable."""
    try:
        from smtpguard.cli import build_parser

        build_parser()
    except ImportError as exc:
        pytest.skip(f"another sub-command package has not landed yet: {exc}")
    from smtpguard.cli import main

    assert main(["probe", "127.0.0.1:0"]) == 2
    assert "smtpguard probe: error:" in capsys.readouterr().err


def test_human_output_shows_the_seed_symptom(capsys: pytest.CaptureFixture[str]) -> None:
    behaviour = Behaviour(allowed=RFC821, banner=SEED_BANNER, split_eod_bug=True)
    with FakeSmtpServer(behaviour) as (host, port):
        code = run_probe_cli(["probe", f"{host}:{port}", "--timeout", "4", *FAST])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert code == 1
    assert "220 *********0****" in text
    assert "split end-of-data: failed" in text
    assert "filter detected: yes" in text
    assert "verdict: PROBLEM - a Mailguard-style SMTP filter is in the path" in text
    assert "split end-of-data is dropped (duplicate deliveries)" in text


def test_port_465_means_implicit_tls() -> None:
    import argparse

    from smtpguard.probe.cli import options_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert options_from_args(parser.parse_args(["probe", "mx.example:465"])).implicit_tls
    opts = options_from_args(parser.parse_args(["probe", "mx.example", "--implicit-tls"]))
    assert (opts.port, opts.implicit_tls) == (465, True)
    assert not options_from_args(parser.parse_args(["probe", "mx.example"])).implicit_tls


AUTH_EHLO = b"250-fake.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"


@pytest.mark.parametrize(
    "ehlo", [AUTH_EHLO, AUTH_EHLO.replace(b"PLAIN ", b"")], ids=["plain", "login"]
)
def test_auth_over_starttls_in_every_session(
    ehlo: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    behaviour = Behaviour(ehlo=ehlo, tls=tls_context(tmp_path), auth=("probe", "s3cret"))
    server = FakeSmtpServer(behaviour)
    with server as (host, port):
        argv = ["probe", f"{host}:{port}", "--tls", "--json", "--timeout", "20", *FAST]
        code = run_probe_cli([*argv, "--auth-user", "probe", "--auth-pass", "s3cret"])
    report = json.loads(capsys.readouterr().out)
    checks = {c["id"]: c for c in report["checks"]}
    mechanism = "PLAIN" if b"PLAIN" in ehlo else "LOGIN"
    assert checks["auth"]["verdict"] == "ok" and mechanism in checks["auth"]["detail"]
    assert checks["starttls"]["verdict"] == "ok"
    assert checks["control-message"]["verdict"] == "ok"
    assert set(report["smuggling"].values()) == {"rejected"}
    # dialogue, control, split, pipelined data, 12 variants: each logged in under TLS
    assert server.record.logins == [(mechanism, True)] * 16
    assert code == 0


def test_wrong_password_is_a_problem_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    behaviour = Behaviour(ehlo=AUTH_EHLO, tls=tls_context(tmp_path), auth=("probe", "s3cret"))
    server = FakeSmtpServer(behaviour)
    with server as (host, port):
        argv = ["probe", f"{host}:{port}", "--tls", "--json", "--timeout", "20", *FAST]
        code = run_probe_cli([*argv, "--auth-user", "probe", "--auth-pass", "wrong"])
    report = json.loads(capsys.readouterr().out)
    checks = {c["id"]: c for c in report["checks"]}
    assert checks["auth"]["verdict"] == "problem" and "535" in checks["auth"]["detail"]
    assert checks["control-message"]["verdict"] == "skipped"
    assert server.record.messages == 0 and "DATA" not in server.record.verbs
    assert code == 1


def test_implicit_tls_with_auth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ehlo = AUTH_EHLO.replace(b"250-STARTTLS\r\n", b"")
    behaviour = Behaviour(ehlo=ehlo, implicit_tls=tls_context(tmp_path), auth=("probe", "pw"))
    server = FakeSmtpServer(behaviour)
    with server as (host, port):
        argv = ["probe", f"{host}:{port}", "--implicit-tls", "--json", "--timeout", "20", *FAST]
        code = run_probe_cli([*argv, "--auth-user", "probe", "--auth-pass", "pw"])
    report = json.loads(capsys.readouterr().out)
    checks = {c["id"]: c for c in report["checks"]}
    assert checks["starttls"]["verdict"] == "ok" and "implicit TLS" in checks["starttls"]["detail"]
    assert "TLSv1." in checks["starttls"]["detail"]
    assert checks["control-message"]["verdict"] == "ok"
    assert server.record.logins == [("PLAIN", True)] * 16
    assert "STARTTLS" not in server.record.verbs
    assert code == 0


def test_implicit_tls_against_a_plain_server_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeSmtpServer(Behaviour()) as (host, port):
        code = run_probe_cli(["probe", f"{host}:{port}", "--implicit-tls", "--timeout", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "TLS handshake" in err and err.count("\n") == 1
