"""The operator files in deploy/ are valid: systemd unit, HAProxy snippet, config,
Containerfile. (No container engine runs here; its file is checked statically.)"""

from __future__ import annotations

import configparser
import contextlib
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.peers import (
    LOOPBACK,
    GatewayProcess,
    SmtpSink,
    deploy_config,
    free_port,
    need,
    self_signed_cert,
)

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


def test_deploy_config_needs_only_its_certificate_and_log_directory(tmp_path: Path) -> None:
    """On a host without them, check-config names exactly what docs/deploy.md has
    the administrator install (certificate, key, log directory), by file line; with
    them in place it is valid."""
    cfg = DEPLOY / "smtpguard.toml"
    r = subprocess.run(
        [sys.executable, "-m", "smtpguard", "check-config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    missing = [p for p in ("/etc/smtpguard/tls", "/var/log/smtpguard") if not Path(p).exists()]
    if missing:
        named = rf"^smtpguard check-config: error: {cfg}:\d+: ([a-z_.]+) = "
        keys = re.findall(named, r.stderr, re.M)
        expected = {
            "/etc/smtpguard/tls": ["tls.certfile", "tls.keyfile"],
            "/var/log/smtpguard": ["protocol_log.path"],
        }
        assert r.returncode == 2
        assert keys == [k for p in missing for k in expected[p]], r.stderr
    tls = tmp_path / "tls"
    tls.mkdir()
    cert, key = self_signed_cert(tls)
    Path(cert).rename(tls / "fullchain.pem")
    Path(key).rename(tls / "privkey.pem")
    r = subprocess.run(
        [sys.executable, "-m", "smtpguard", "check-config",
         str(deploy_config(tmp_path, tls=tls, logs=tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "xclient" in r.stdout


def test_stop_timeout_outlasts_the_drain_and_paths_are_writable() -> None:
    import tomllib

    cfg = tomllib.loads((DEPLOY / "smtpguard.toml").read_text())
    service = _unit()["Service"]
    assert int(service["TimeoutStopSec"]) > cfg["gateway"]["drain_grace"]
    writable = service["ReadWritePaths"].split()
    log_dir = str(Path(cfg["protocol_log"]["path"]).parent)
    assert log_dir in writable
    assert service["Restart"] == "on-failure" and service["KillMode"] == "mixed"
    assert "examples/smtpguard.toml" in (DEPLOY / "smtpguard.toml").read_text()


def test_containerfile_is_slim_non_root_on_port_25_with_a_health_check() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert re.search(r"^ARG BASE=\S*python:[\d.]+-slim$", text, re.M)  # the default base
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]
    assert re.search(r"^EXPOSE 25\b", text, re.M)
    assert "HEALTHCHECK" in text and "QUIT" in text
    assert '"--listen", "0.0.0.0:25"' in text
    assert text.index("USER smtpguard") < text.index("ENTRYPOINT")


def test_containerfile_copies_only_what_exists() -> None:
    root = DEPLOY.parent
    copied: list[str] = []
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:  # not from a stage
            copied += line.split()[1:-1]
    for src in copied:
        assert (root / src).exists(), src
    # Everything the package build reads, setup.py included (it compiles the core).
    assert {"pyproject.toml", "setup.py", "README.md", "src"} <= {c.rstrip("/") for c in copied}
    assert "USER smtpguard" in (DEPLOY / "Containerfile").read_text()


def test_haproxy_snippet_health_check_passes_through_the_gateway(tmp_path: Path) -> None:
    """deploy/haproxy.cfg's backend (smtpchk, send-proxy-v2) against a real gateway
    that trusts the balancer: HAProxy's check reaches L7OK and mail goes through."""
    sink = SmtpSink(tmp_path)
    gw = GatewayProcess(
        "--upstream", sink.address, "--proxy-from", "127.0.0.1/32", workdir=tmp_path
    )
    port, stats = free_port(), tmp_path / "stats.sock"
    text = (DEPLOY / "haproxy.cfg").read_text()
    text = text.replace("global\n", f"global\n    stats socket {stats}\n", 1)
    text = text.replace("bind :25", f"bind {LOOPBACK}:{port}")
    text = text.replace("inter 10s", "inter 200ms")
    text = re.sub(r"maxconn \d+", "maxconn 100", text)  # this host's FD limit may be low
    text = re.sub(r"10\.0\.0\.1[12]:25", gw.address, text)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    hap = subprocess.Popen(
        [need("haproxy"), "-db", "-f", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, status = time.monotonic() + 20, ""
        while time.monotonic() < deadline:
            status = _check_status(stats)
            if status == "L7OK,L7OK":
                break
            time.sleep(0.1)
        assert status == "L7OK,L7OK"
        with smtplib.SMTP(LOOPBACK, port, timeout=15) as s:
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: via haproxy\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 10
        while not sink.messages() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sink.messages()) == 1
    finally:
        hap.terminate()
        hap.wait(15)
        gw.stop()
        sink.stop()


def _check_status(stats: Path) -> str:
    """check_status of the backend's servers, from HAProxy's stats socket."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(stats))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:] if ln]
        return ",".join(
            r["check_status"]
            for r in rows
            if r["pxname"] == "smtpguard" and r["svname"] != "BACKEND"
        )
    return ""
