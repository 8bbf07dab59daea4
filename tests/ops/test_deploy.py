"""The operator files in deploy/ are valid: systemd unit, HAProxy snippet, config,
Containerfile. (No container engine runs here; its file is checked statically.)"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.peers import need

DEPLOY = Path(__file__).parents[2] / "deploy"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    "User": "smtpguard",
}


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(DEPLOY / "smtpguard.service")
    return cp


def test_systemd_unit_is_hardened_and_not_root() -> None:
    service = _unit()["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    assert "ReadWritePaths" in service and "HUP" in service["ExecReload"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 30  # longer than the default drain grace


def test_systemd_analyze_finds_nothing_but_the_missing_binary() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:  # the static checks above still ran
        return
    r = subprocess.run(
        [tool, "verify", str(DEPLOY / "smtpguard.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    noise = re.compile(
        r"is not executable|No such file or directory|Failed to .*user|"
        r"User .* not found|^$"
    )
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if not noise.search(ln)]
    assert problems == []


def test_haproxy_snippet_is_valid_and_sends_proxy_v2() -> None:
    text = (DEPLOY / "haproxy.cfg").read_text()
    assert "send-proxy-v2" in text and "mode tcp" in text
    r = subprocess.run(
        [need("haproxy"), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_deploy_config_is_valid() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "smtpguard", "check-config", str(DEPLOY / "smtpguard.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "xclient" in r.stdout


def test_containerfile_copies_only_what_exists() -> None:
    root = DEPLOY.parent
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = line.split()[1:-1]
            for src in sources:
                assert (root / src).exists(), src
    assert "USER smtpguard" in (DEPLOY / "Containerfile").read_text()
