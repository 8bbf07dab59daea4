"""``check-config`` runs ``serve``'s start-up checks: "valid" means ``serve`` starts,
and both list every problem at once, each naming the key and the file's line (or
the flag the user typed), with nothing created on the way."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

from smtpguard.config import keys
from smtpguard.config.load import load
from smtpguard.config.render import POLICY_TABLES, to_data
from tests.peers import (
    LOOPBACK,
    GatewayProcess,
    SmtpSink,
    deploy_config,
    free_port,
    run_cli,
    self_signed_cert,
)

ERROR = "smtpguard {}: error: "


def certificates(directory: Path, *, matching: bool = True) -> Path:
    """``directory`` holding fullchain.pem and privkey.pem as deploy/ names them;
    with ``matching=False`` the key is another certificate's."""
    directory.mkdir()
    cert, key = self_signed_cert(directory)
    os.rename(cert, directory / "fullchain.pem")
    os.rename(key, directory / "privkey.pem")
    if not matching:
        other = directory / "other"
        other.mkdir()
        _, other_key = self_signed_cert(other)
        shutil.copy(other_key, directory / "privkey.pem")
        shutil.rmtree(other)
    return directory


def line_of(path: Path, pattern: str) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if re.match(pattern, text))


def errors(stderr: str, command: str) -> list[str]:
    lines = stderr.splitlines()
    assert all(ln.startswith(ERROR.format(command)) for ln in lines), stderr
    return [ln.removeprefix(ERROR.format(command)) for ln in lines]


def test_every_problem_at_once_with_key_and_line_and_serve_refuses_the_same(
    tmp_path: Path,
) -> None:
    """The deploy config with its log directory missing, its certificate missing and
    dedupe's store under a file: three problems, three lines, in the file's order."""
    work = tmp_path / "cwd"
    work.mkdir()
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    cfg = deploy_config(
        tmp_path,
        tls=tmp_path / "tls",  # never made: no certificate, no key
        logs=tmp_path / "no-such-dir",
        listen=f"{LOOPBACK}:{free_port()}",
        upstream=f"{LOOPBACK}:{free_port()}",
        metrics_listen=f"{LOOPBACK}:{free_port()}",
    )
    with cfg.open("a") as f:
        f.write('\n[state]\ndirectory = "blocker/state"\n\n[dedupe]\nenabled = true\n')
    check = run_cli("check-config", str(cfg), cwd=work)
    assert check.returncode == 2 and "Traceback" not in check.stderr and check.stdout == ""
    found = errors(check.stderr, "check-config")
    cert_line = line_of(cfg, "certfile = ")
    key_line = line_of(cfg, "keyfile = ")
    log_line = line_of(cfg, r'path = ".*protocol\.log"')
    state_line = line_of(cfg, 'directory = "blocker/state"')
    assert found == [
        f'{cfg}:{cert_line}: tls.certfile = "{tmp_path}/tls/fullchain.pem": cannot read: '
        "No such file or directory",
        f'{cfg}:{key_line}: tls.keyfile = "{tmp_path}/tls/privkey.pem": cannot read: '
        "No such file or directory",
        f'{cfg}:{log_line}: protocol_log.path = "{tmp_path}/no-such-dir/protocol.log": '
        f"cannot be created: directory {tmp_path}/no-such-dir does not exist",
        f'{cfg}:{state_line}: state.directory = "{tmp_path}/blocker/state": '
        f"{tmp_path}/blocker is not a directory",
    ]
    serve = run_cli("serve", "--config", str(cfg), cwd=work)
    assert serve.returncode == 2 and "Traceback" not in serve.stderr
    assert errors(serve.stderr, "serve") == found
    # Nothing was made on the way: no log, no store, nothing in the working directory.
    assert sorted(os.listdir(tmp_path)) == ["blocker", "cwd", "smtpguard.toml"]
    assert os.listdir(work) == []


def test_a_key_that_does_not_match_is_named_from_the_file_or_the_flag(tmp_path: Path) -> None:
    tls = certificates(tmp_path / "tls", matching=False)
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = deploy_config(
        tmp_path,
        tls=tls,
        logs=logs,
        listen=f"{LOOPBACK}:{free_port()}",
        upstream=f"{LOOPBACK}:0",
        metrics_listen=f"{LOOPBACK}:{free_port()}",
    )
    check = run_cli("check-config", str(cfg))
    key_line, up_line = line_of(cfg, "keyfile = "), line_of(cfg, "upstream = ")
    assert errors(check.stderr, "check-config") == [
        f'{cfg}:{key_line}: tls.keyfile = "{tls}/privkey.pem": the private key does not '
        f"match the certificate in {tls}/fullchain.pem",
        f'{cfg}:{up_line}: gateway.upstream = "{LOOPBACK}:0": port 0 cannot be connected to '
        "(expected 1-65535)",
    ]
    # A path the user typed is named by its flag; one from the file, never by a flag.
    right = certificates(tmp_path / "right")
    serve = run_cli(
        "serve", "--config", str(cfg), "--tls-key", str(right / "privkey.pem"),
        "--protocol-log", str(tmp_path / "gone" / "p.log"),
    )  # fmt: skip
    assert errors(serve.stderr, "serve") == [
        f'{cfg}:{up_line}: gateway.upstream = "{LOOPBACK}:0": port 0 cannot be connected to '
        "(expected 1-65535)",
        f"--protocol-log {tmp_path}/gone/p.log: cannot be created: directory "
        f"{tmp_path}/gone does not exist",
        f"--tls-key {right}/privkey.pem: the private key does not match the certificate in "
        f"{tls}/fullchain.pem",
    ]
    assert "--protocol-log" not in run_cli("check-config", str(cfg)).stderr


def test_a_good_config_is_valid_and_serve_starts_with_it(tmp_path: Path) -> None:
    tls = certificates(tmp_path / "tls")
    logs = tmp_path / "logs"
    logs.mkdir()
    sink = SmtpSink(tmp_path)
    try:
        cfg = deploy_config(
            tmp_path,
            tls=tls,
            logs=logs,
            listen=f"{LOOPBACK}:0",
            upstream=sink.address,
            metrics_listen=f"{LOOPBACK}:{free_port()}",
        )
        check = run_cli("check-config", str(cfg))
        assert check.returncode == 0, check.stderr
        assert check.stdout.startswith(f"{cfg}: valid\n")
        gw = GatewayProcess(
            "--config", str(cfg), "--workers", "1", "--log-format", "text", workdir=tmp_path
        )
        block = gw.startup_block()
        # A greeting: the event loop runs, past installing its signal handlers.
        with socket.create_connection((LOOPBACK, gw.port), 10) as c:
            assert c.recv(512).startswith(b"220 ")
        code, out = gw.stop()
    finally:
        sink.stop()
    assert "STARTTLS      terminate" in block and code == 0, block + out
    assert (logs / "protocol.log").exists()


def test_every_effective_setting_is_printed_state_and_dedupe_included(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "all.toml"
    cfg.write_text(
        f'[state]\ndirectory = "{state}"\nlease = 45.0\n[dedupe]\nenabled = true\nwindow = 600.0\n'
    )
    text = run_cli("check-config", str(cfg))
    data = json.loads(run_cli("check-config", "--json", str(cfg)).stdout)
    assert text.returncode == 0, text.stderr
    assert data == json.loads(json.dumps(to_data(load(str(cfg)))))
    tables = [
        t for t in keys.walk() if t.section is not None and len(t.path) == 1
    ]  # fmt: skip
    shown = [t.name for t in tables if t.name not in POLICY_TABLES]
    assert {"gateway", "protocol_log", "tls", "access", "state", "dedupe"} <= set(shown)
    blocks = {b.split("\n", 1)[0]: b for b in text.stdout.split("\n\n")}
    for table in tables:
        if table.name in POLICY_TABLES:
            continue
        assert table.section is not None
        for key in keys.walk(table.section, table.path):
            assert key.name in data[table.name], key.dotted
            assert re.search(rf"^  {key.name} ", blocks[table.name], re.M), key.dotted
    assert data["state"]["directory"] == str(state) and data["state"]["lease"] == 45.0
    assert data["dedupe"] == {"enabled": True, "window": 600.0, "answer": "queue-id"}
    assert re.search(rf"^  directory +{re.escape(str(state))}$", blocks["state"], re.M)
    assert re.search(r"^  window +600\.0$", blocks["dedupe"], re.M)
    assert not state.exists()  # checked, not made


def test_addresses_are_checked_as_serve_uses_them(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        '[gateway]\nlisten = "mx example:25"\nupstream = "127.0.0.1:0"\n'
        '[tls]\nimplicit_listen = "127.0.0.1:4650"\ncertfile = "c.pem"\n'
        "[access]\n"
    )
    r = run_cli("check-config", str(cfg), "--json")
    assert errors(r.stderr, "check-config") == [
        f'{cfg}:2: gateway.listen = "mx example:25": not an IP address or host name to listen on',
        f'{cfg}:3: gateway.upstream = "127.0.0.1:0": port 0 cannot be connected to '
        "(expected 1-65535)",
        f'{cfg}:6: tls.certfile = "{tmp_path}/c.pem": cannot read: No such file or directory',
    ]
    serve = run_cli(
        "serve", "--config", str(cfg), "--listen", "127.0.0.1:4650", "--upstream", "[::1]:25"
    )  # fmt: skip
    assert errors(serve.stderr, "serve") == [
        f'{cfg}:5: tls.implicit_listen = "127.0.0.1:4650": the same address as --listen',
        f'{cfg}:6: tls.certfile = "{tmp_path}/c.pem": cannot read: No such file or directory',
    ]
