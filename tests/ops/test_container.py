"""deploy/Containerfile, built and run with Podman.

No image registry is reachable from CI, so the image is built on a Debian bookworm
base made here with debootstrap (``--build-arg BASE=...``; the file's default base,
the official slim Python image, is Debian bookworm too). The machine runs containers
under gVisor, which needs the ``runc`` runtime, cgroupfs, no default ulimits and the
host network (see ``_podman``). The container's gateway listens on a free loopback
port (a non-root process cannot bind port 25 in the host network namespace), relays
to smtp-sink, terminates TLS with a throw-away certificate and drains on
``podman stop``; the image's HEALTHCHECK command is run against that port. The
embedded state store (deploy/smtpguard.toml's per-address limits need it) is looked
for where the image says it is: ``/var/lib/smtpguard/state.sqlite3`` on the image's
volume, not the non-root user's fallback under ``~/.local/state``.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, SmtpSink, free_port, need, self_signed_cert, wait_port

pytestmark = [pytest.mark.e2e, pytest.mark.standalone, pytest.mark.timeout(3600)]

ROOT = Path(__file__).parents[2]
STATE_DIR = "/var/lib/smtpguard"  # the image's STATE_DIRECTORY, and its volume
BASE = "localhost/smtpguard-base:bookworm"
IMAGE = "localhost/smtpguard:ci"
MIRROR = "http://deb.debian.org/debian"


def _podman_run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    conf = Path(os.environ.get("TMPDIR", "/tmp")) / "smtpguard-containers.conf"
    # gVisor refuses the default RLIMIT_NOFILE/NPROC settings and crun's cgroup setup.
    conf.write_text(
        '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
    )
    return subprocess.run(
        [need("podman"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CONTAINERS_CONF": str(conf)},
    )


def _podman(*args: str, timeout: float = 600) -> str:
    r = _podman_run(*args, timeout=timeout)
    assert r.returncode == 0, f"podman {' '.join(args)}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _base_image(tmp_path: Path) -> None:
    """Debian bookworm with python3 and venv, made with debootstrap (kept as a cache)."""
    if _podman_run("image", "exists", BASE).returncode == 0:
        return
    root = tmp_path / "rootfs"
    cmd = [need("debootstrap"), "--variant=minbase", "--include=python3,python3-venv"]
    r = subprocess.run(
        [*cmd, "bookworm", str(root), MIRROR],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tar = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True, timeout=600)
    shutil.rmtree(root, ignore_errors=True)
    _podman("import", str(tar), BASE, timeout=900)


def test_containerfile_builds_and_the_image_relays_mail(tmp_path: Path) -> None:
    _base_image(tmp_path)
    # Docker format: the OCI format has no HEALTHCHECK and Podman would drop it.
    # --no-cache: every step really runs on the current sources.
    build = ["build", "--no-cache", "--format", "docker", "--network", "host"]
    build += ["--build-arg", f"BASE={BASE}"]
    # pip inside the build trusts the same CAs as this machine (a TLS-inspecting
    # egress proxy needs its CA; elsewhere this is the ordinary system bundle).
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        pipconf = tmp_path / "pip.conf"
        pipconf.write_text(f"[global]\ncert = {bundle}\n")
        build += ["-v", f"{bundle}:{bundle}:ro", "-v", f"{pipconf}:/etc/pip.conf:ro"]
    _podman(*build, "-f", "deploy/Containerfile", "-t", IMAGE, str(ROOT), timeout=3000)
    version = _podman_run("run", "--rm", "--network", "host", IMAGE, "--version").stdout
    assert "core: compiled" in version

    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = self_signed_cert(certs)
    os.chmod(key, 0o644)  # the container's smtpguard user reads it
    sink = SmtpSink(tmp_path)
    port, metrics = free_port(), free_port()
    name = f"smtpguard-ci-{os.getpid()}"
    _podman(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "-v",
        f"{certs}:/certs:ro",
        IMAGE,
        "serve",
        "--config",
        "/etc/smtpguard/smtpguard.toml",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--upstream",
        sink.address,
        "--metrics-listen",
        f"{LOOPBACK}:{metrics}",
        "--tls-cert",
        "/certs/cert.pem",
        "--tls-key",
        "/certs/key.pem",
        "--workers",
        "1",
    )
    try:
        wait_port(port, timeout=60)
        ctx = ssl.create_default_context(cafile=cert)
        ctx.check_hostname = False
        with smtplib.SMTP(LOOPBACK, port, timeout=30) as s:
            s.ehlo("client.example")
            s.starttls(context=ctx)
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: container\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 20
        while not sink.messages() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(sink.messages()) == 1
        # The store is where the image says, in the volume, and nowhere else.
        store = f"{STATE_DIR}/state.sqlite3"
        _podman("exec", name, "test", "-s", store)
        prune = ["(", "-path", "/proc", "-o", "-path", "/sys", ")", "-prune", "-o"]
        find = ["find", "/", *prune, "-name", "state.sqlite3*", "-print"]
        found = _podman("exec", "--user", "root", name, *find)
        assert found.split() and all(p.startswith(store) for p in found.split()), found
        assert _podman_run("exec", name, "test", "-e", f"{STATE_DIR}/.local").returncode == 1
        container = json.loads(_podman_run("inspect", name).stdout)[0]
        mounts = {m["Destination"]: m for m in container["Mounts"]}
        assert mounts[STATE_DIR]["Type"] == "volume", mounts
        image = json.loads(_podman_run("inspect", IMAGE).stdout)[0]
        health = image["Healthcheck"]["Test"]  # Docker-format images only
        assert health[0] == "CMD-SHELL" and "('127.0.0.1', 25)" in health[1]
        probe = health[1].replace("('127.0.0.1', 25)", f"('127.0.0.1', {port})")
        _podman("exec", name, "sh", "-c", probe)
        _podman("stop", "-t", "45", name, timeout=120)
        state = json.loads(_podman_run("inspect", name).stdout)[0]["State"]
        logs = _podman("logs", name)
        assert state["ExitCode"] == 0, logs
        # deploy/smtpguard.toml logs JSON: the start-up block is one object too.
        objs = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        [started] = [o for o in objs if o.get("event") == "SG-GATEWAY-STARTED"]
        assert "esmtp mode" in started["message"] and started["starttls"] == "terminate", logs
        assert started["shared_state"].startswith(f"local {store}: per-address limits"), logs
    finally:
        _podman_run("rm", "-f", name)
        sink.stop()
