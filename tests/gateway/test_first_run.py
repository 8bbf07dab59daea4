"""What a new administrator meets when first running ``smtpguard serve``: the banner
name, the startup block, one log line per session on a terminal (quiet as a daemon),
the XCLIENT warning, TLS file errors that name the file and the problem, and the
built-in mailbox's Return-Path."""

from __future__ import annotations

import mailbox
import os
import pty
import select
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpguard.config import load as config_load
from smtpguard.config.load import effective_log_level, is_loopback_name, load
from smtpguard.gateway.cli import XCLIENT_OFF_WARNING, greeting_shown
from tests.peers import (
    LOOPBACK,
    GatewayProcess,
    SmtpSink,
    free_port,
    run_cli,
    self_signed_cert,
    wait_port,
)

# -- the banner name ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "fqdn", "expected"),
    [
        ("vm", "localhost", "vm"),  # /etc/hosts: "127.0.0.1 localhost vm" -> getfqdn() lies
        ("vm", "localhost.localdomain", "vm"),
        ("vm", "ip6-localhost", "vm"),
        ("mx1", "mx1.example.org", "mx1.example.org"),
        ("mx1", "mx1", "mx1"),  # no domain known
        ("mx1.example.org", "localhost", "mx1.example.org"),  # already qualified
        ("", "localhost", "localhost"),
        ("localhost", "localhost", "localhost"),
    ],
)
def test_generic_banner_name_is_the_host_name_never_a_loopback_alias(
    monkeypatch: pytest.MonkeyPatch, hostname: str, fqdn: str, expected: str
) -> None:
    monkeypatch.setattr(config_load.socket, "gethostname", lambda: hostname)
    monkeypatch.setattr(config_load.socket, "getfqdn", lambda name="": fqdn)
    assert config_load.default_hostname() == expected
    assert load(None).policy.hostname == expected


def test_loopback_aliases() -> None:
    for name in ("localhost", "LOCALHOST.", "localhost.localdomain", "localhost6", "ip6-loopback"):
        assert is_loopback_name(name), name
    for name in ("vm", "mx.example.org", "localhostess.example"):
        assert not is_loopback_name(name), name


def test_startup_block_shows_the_greeting() -> None:
    p = load(None, [(("hostname",), "mx.example.org", "--hostname")]).policy
    assert greeting_shown(p) == "220 mx.example.org ESMTP (--hostname or hostname = ... to change)"
    custom = load(None, [(("banner",), "custom", "--banner"), (("banner_text",), "hi", "--banner")])
    assert greeting_shown(custom.policy) == "220 hi"
    assert "masked" in greeting_shown(load(None, [(("banner",), "pix", "--banner")]).policy)


# -- log level: info on a terminal, warning for a daemon -----------------------------------------


def test_log_level_default_depends_on_the_terminal() -> None:
    s = load(None)
    assert effective_log_level(s, tty=True) == "info"
    assert effective_log_level(s, tty=False) == "warning"
    s = load(None, [(("gateway", "log_level"), "error", "--log-level")])
    assert effective_log_level(s, tty=True) == "error"


def _read_until(fd: int, needle: bytes, proc: subprocess.Popen[bytes], limit: float = 20) -> bytes:
    """Read a pty until ``needle`` shows up (bounded wait, not a timing assertion)."""
    out = b""
    deadline = time.monotonic() + limit
    while needle not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
        elif proc.poll() is not None:
            break
    return out


def _serve_with_tty_stderr(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int, int]:
    port = free_port()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtpguard",
            "serve",
            "--listen",
            f"{LOOPBACK}:{port}",
            "--workers",
            "1",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=tmp_path,
    )
    os.close(slave)
    wait_port(port, proc)
    return proc, master, port


def test_terminal_shows_one_line_per_session_and_null_sender_return_path(tmp_path: Path) -> None:
    proc, master, port = _serve_with_tty_stderr(tmp_path)
    try:
        with smtplib.SMTP(LOOPBACK, port, timeout=15) as s:
            s.sendmail("<>", ["b@example.net"], b"Subject: bounce\r\n\r\nhi\r\n")
        out = _read_until(master, b"1 message relayed", proc)
    finally:
        proc.terminate()
        proc.wait(20)
        os.close(master)
    # The readiness probe's connection is a session too: "0 messages relayed".
    lines = [ln for ln in out.decode(errors="replace").splitlines() if "1 message relayed" in ln]
    assert len(lines) == 1, out
    assert " INFO " in lines[0] and " session closed after " in lines[0]
    assert f"{LOOPBACK}:" in lines[0] and "1 message relayed (" in lines[0]
    box = mailbox.Maildir(str(tmp_path / "smtpguard-mail"), create=False)
    (msg,) = list(box)
    assert msg["Return-Path"] == "<>"


def test_daemon_stderr_stays_quiet(tmp_path: Path) -> None:
    gw = GatewayProcess(workdir=tmp_path)  # stderr is a pipe, not a terminal
    head = _block(gw)
    try:
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=15) as s:
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nhi\r\n")
    finally:
        _, out = gw.stop()  # sessions still open are released (and logged) in the drain
    assert "session closed" not in head + out
    assert "  greeting      220 " in head


def test_log_level_flag_turns_the_session_line_on_for_a_daemon(tmp_path: Path) -> None:
    gw = GatewayProcess("--log-level", "info", workdir=tmp_path)
    try:
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=15) as s:
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nhi\r\n")
    finally:
        _, out = gw.stop()
    assert "session closed after" in out and "1 message relayed" in out


def _block(gw: GatewayProcess) -> str:
    """The startup block (read until its last line): the port may accept connections
    before the block is printed."""
    assert gw.proc.stdout is not None
    lines = []
    while not lines or not lines[-1].startswith("  stop with"):
        line = gw.proc.stdout.readline().decode()
        if not line:
            break
        lines.append(line)
    return "".join(lines)


def _stopped(gw: GatewayProcess) -> str:
    head = _block(gw)
    return head + gw.stop()[1]


# -- the XCLIENT warning ----------------------------------------------------------------------


def test_xclient_off_in_front_of_a_real_server_warns_at_start(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    try:
        for extra, warned in (
            ((), True),
            (("--xclient",), False),
            (("--upstream-proxy", "v2"), False),
        ):
            gw = GatewayProcess("--upstream", sink.address, *extra, workdir=tmp_path)
            out = _stopped(gw)
            assert (XCLIENT_OFF_WARNING[0] in out) is warned, (extra, out)
            if warned:
                assert "permit_mynetworks" in out and "docs/servers.md" in out
    finally:
        sink.stop()
    gw = GatewayProcess(workdir=tmp_path)  # the built-in mailbox: nothing to warn about
    out = _stopped(gw)
    assert "WARNING" not in out


# -- TLS files: which file, what is wrong -------------------------------------------------------


def _serve_error(tmp_path: Path, *args: str) -> str:
    r = run_cli("serve", "--listen", f"{LOOPBACK}:0", "--workers", "1", *args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip()


def test_tls_cert_problems_name_the_file_and_the_problem(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = self_signed_cert(other_dir)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = _serve_error(tmp_path, "--tls-cert", "/nonexistent.pem")
    assert missing == (
        "smtpguard serve: error: "
        "--tls-cert /nonexistent.pem: cannot read: No such file or directory"
    )
    assert "no PEM certificate" in _serve_error(tmp_path, "--tls-cert", str(junk))
    no_key = _serve_error(tmp_path, "--tls-cert", cert)
    assert f"--tls-cert {cert}: no private key in it" in no_key and "--tls-key" in no_key
    mismatch = _serve_error(tmp_path, "--tls-cert", cert, "--tls-key", other_key)
    assert f"--tls-key {other_key}: the private key does not match the certificate" in mismatch
    # From a config file: the file and the key are named.
    cfg = tmp_path / "tls.toml"
    cfg.write_text('[tls]\ncertfile = "cert.pem"\nkeyfile = "nokey.pem"\n')
    from_file = _serve_error(tmp_path / "other", "--config", str(cfg))
    assert f'{cfg}:3: tls.keyfile = "{tmp_path}/nokey.pem": cannot read' in from_file
    # And the right pair starts (relative names resolved against the config file).
    cfg.write_text('starttls = "terminate"\n[tls]\ncertfile = "cert.pem"\nkeyfile = "key.pem"\n')
    gw = GatewayProcess("--config", str(cfg), workdir=other_dir)
    out = _stopped(gw)
    assert "STARTTLS      terminate" in out, out
    assert Path(key).exists()


def test_starttls_terminate_without_certificate_names_the_flag_and_the_key(tmp_path: Path) -> None:
    err = _serve_error(tmp_path, "--starttls", "terminate")
    assert err.startswith('smtpguard serve: error: --starttls: got "terminate"')
    assert "--tls-cert FILE" in err and "tls.certfile" in err
