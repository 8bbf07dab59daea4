"""check-config and serve --config on the command line: exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard.cli import main

ROOT = Path(__file__).parents[2]
EXAMPLE = str(ROOT / "examples" / "smtpguard.toml")


def test_check_config_prints_effective_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{EXAMPLE}: valid")
    assert "rcpt_count                 > 100: drop-connection" in out
    assert "invalid_recipients         > 20: rate-limit (5 per 60s)" in out
    assert "192.0.2.0/24" in out


def test_check_config_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--json", EXAMPLE]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policy"]["mode"] == "esmtp"
    assert data["policy"]["checks"]["rcpt_count"] == {
        "action": "drop-connection",
        "limit": 100,
        "rate": 0,
        "period": 60.0,
    }
    assert data["access"]["deny"] == ["192.0.2.0/24"]
    assert data["gateway"]["upstream"] is None


def test_check_config_invalid_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[checks.rcpt_count]\nlimit = "lots"\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f'smtpguard check-config: error: {bad}:2: checks.rcpt_count.limit: got "lots", '
        "expected an integer >= 0\n"
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpguard", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["check-config", "serve --config"])
def test_real_process_no_traceback(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "smtpguard.toml"
    bad.write_text('mode = "esmtp"\n\n[gateway]\nworkrs = 2\n')
    r = _cli(*command.split(), str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f'{bad}:4: gateway.workrs: unknown key (did you mean "workers"?)' in r.stderr


def test_serve_flag_error_names_the_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text("[gateway]\nmax_sessions = 10\n")
    r = _cli("serve", "--config", str(cfg), "--max-sessions", "0")
    assert r.returncode == 2
    assert "--max-sessions: got 0, expected an integer >= 1" in r.stderr


def test_serve_with_unloadable_certificate_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "tls.toml"
    cfg.write_text(f'starttls = "terminate"\n[tls]\ncertfile = "{tmp_path}/missing.pem"\n')
    r = _cli("serve", "--config", str(cfg), "--listen", "127.0.0.1:0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert (
        f'{cfg}:3: tls.certfile = "{tmp_path}/missing.pem": cannot read: No such file' in r.stderr
    )
