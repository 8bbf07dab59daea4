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
    assert run_probe_cli(["probe", f"127.0.0.1:{port}", "--json", "--timeout", "10"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot connect to 127.0.0.1:{port}" in captured.err
    assert captured.err.count("\n") == 1


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
    # control + split + one message per smuggling variant, each ending once
    assert server.record.messages == 2 + 6


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
