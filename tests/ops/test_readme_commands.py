"""The README's commands, run exactly as written, in a fresh ``git clone`` of this
repository with Debian's ``/usr/bin/python3`` first in PATH and ``HOME`` in a
temporary directory (so ``~/.smtpguard`` is the test's own).

One test, one install: the first command installs smtpguard as the README says
(``python3 -m venv`` and ``pip install .``, the core compiled with mypyc, its
dependencies from the package index). That is the slow part: the whole test took
84 s on a 2-core machine, the install alone 3 to 5 minutes when the machine was
busy (load 7). It is not shortened with a prepared environment: what is tested is
that the command works as a new user types it.

Then, against that install: the "Try it" lines, the seed's problem and its fix
(``serve --dedupe``: a copy sent again is not delivered again), the man-page and
completion commands, and the production command (as root, in a private mount
namespace with ``/var/log`` on a tmpfs: it makes its log directory, then ``serve``
refuses, naming the certificate it lacks, by key and line; where no mount
namespace can be made, as in some containers, this one command is not run).
``bash .ci/run`` is not run here: it is the test suite itself. At the end ``git
status --porcelain`` in the clone is empty: no command left anything in the
checkout.

Every fenced block of the README is accounted for: a block this test does not know
fails it, so a command added to the README is a command added here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.peers import need

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEBIAN_PYTHON = Path("/usr/bin/python3")
QUICK_PORT = 2525  # the README's own address: 127.0.0.1:2525
INSTALL_TIMEOUT = 1200.0


def blocks() -> list[str]:
    return re.findall(r"^```\n(.*?)^```", README, re.M | re.S)


def block_with(text: str) -> str:
    (found,) = [b for b in blocks() if text in b]
    return found


def inline(pattern: str) -> str:
    """A command written in the README's prose, between backticks."""
    m = re.search(rf"`({pattern}[^`]*)`", README)
    assert m is not None, pattern
    return m[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True


class Shell:
    """Commands in the clone, as a user's shell runs them."""

    def __init__(self, clone: Path, home: Path, state: Path) -> None:
        self.clone = clone
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update(HOME=str(home), XDG_STATE_HOME=str(state))
        env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"  # Debian's python3 first
        env.pop("SMTPGUARD_PURE_PYTHON", None)
        self.env = env

    def run(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", script],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, script: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["bash", "-c", script],
            cwd=self.clone,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def serving(proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(QUICK_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
            pytest.fail(f"nothing on 127.0.0.1:{QUICK_PORT} (exit {proc.poll()}): {out[-3000:]}")
        time.sleep(0.5)


def interrupt(proc: subprocess.Popen[bytes]) -> str:
    """Ctrl-C, as the README's "stop with" line says; the output."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.stdout.read().decode() if proc.stdout else ""


def can_unshare_mounts() -> bool:
    """Root, with a private mount namespace allowed (not in every container)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-m", "--propagation", "private", "true"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def delivered(clone: Path) -> int:
    return len(os.listdir(clone / "smtpguard-mail" / "new"))


def test_the_readmes_commands_as_written_on_a_fresh_clone(tmp_path: Path) -> None:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no /usr/bin/python3: the README's first command is for Debian's python3")
    if subprocess.run([str(DEBIAN_PYTHON), "-c", "import ensurepip"]).returncode != 0:
        pytest.fail("/usr/bin/python3 has no venv module: install python3-venv (.ci/run does)")
    if port_open(QUICK_PORT):
        pytest.fail(f"127.0.0.1:{QUICK_PORT}, the README's address, is taken by another program")
    quick, ci_run = blocks()[:2]
    dedupe = block_with("serve --dedupe")
    production = block_with("deploy/smtpguard.toml")
    manpage = block_with("argparse-manpage")
    synopsis = block_with("smtpguard serve [--config")
    plog_sample = block_with(": A connection was accepted from")
    assert ci_run == "bash .ci/run\n"  # the suite itself: CI runs it
    known = {quick, ci_run, dedupe, production, manpage, synopsis, plog_sample}
    assert set(blocks()) == known, set(blocks()) - known
    swaks_line = inline("swaks --server ")
    python_line = inline("python3 -c ")

    clone, home, state = tmp_path / "clone", tmp_path / "home", tmp_path / "state"
    home.mkdir()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    shell = Shell(clone, home, state)

    # 1. Install and run on the built-in mailbox; the "Try it" lines deliver.
    need("swaks")
    proc = shell.start(quick.strip())
    try:
        serving(proc, INSTALL_TIMEOUT)
        for line in (swaks_line, python_line):
            r = shell.run(line, timeout=60)
            assert r.returncode == 0, line + "\n" + r.stdout + r.stderr
    finally:
        out = interrupt(proc)
    assert "listening on  127.0.0.1:2525" in out and "smtpguard: stopped" in out, out[-3000:]
    assert delivered(clone) == 2
    assert (home / ".smtpguard" / "bin" / "smtpguard").exists()

    # 2. The seed's problem and its fix: the same message twice, one delivery.
    proc = shell.start(dedupe)
    try:
        serving(proc, 60)
        for _ in range(2):
            r = shell.run(python_line, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
    finally:
        out = interrupt(proc)
    assert "dedupe (86400s window)" in out, out[-3000:]
    assert delivered(clone) == 3
    assert (state / "smtpguard" / "state.sqlite3").exists()

    # 3. Man page and completions: shown and installed for the user, nothing left here.
    r = shell.run(manpage, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "smtpguard - SMTP inspection gateway" in r.stdout
    bash_completion = home / ".local/share/bash-completion/completions/smtpguard"
    assert "_shtab_smtpguard" in bash_completion.read_text()
    assert (home / ".zfunc" / "_smtpguard").read_text().startswith("#compdef smtpguard")

    # 4. Production, as root in a private mount namespace: the log directory is made
    # on a tmpfs; serve refuses for the certificate the administrator installs.
    if can_unshare_mounts():
        shim = tmp_path / "shim"
        shim.mkdir()
        if shutil.which("sudo") is None:  # root already: sudo runs the command
            (shim / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
            (shim / "sudo").chmod(0o755)
        script = (
            "mount -t tmpfs smtpguard-test /var/log && "
            f"PATH={shim}:$PATH && {production.strip()}; echo exit=$?"
        )
        r = shell.run(f"unshare -m --propagation private bash -c {shlex.quote(script)}")
        cfg = "deploy/smtpguard.toml"
        if not Path("/etc/smtpguard/tls/fullchain.pem").exists():
            lines = r.stderr.splitlines()
            assert r.stdout.strip().endswith("exit=2"), r.stdout + r.stderr
            assert [re.sub(r":\d+: ", ":N: ", ln.split(" = ")[0]) for ln in lines] == [
                f"smtpguard serve: error: {cfg}:N: tls.certfile",
                f"smtpguard serve: error: {cfg}:N: tls.keyfile",
            ], r.stderr

    # Nothing any of it did is in the checkout.
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""
    assert not (clone / "smtpguard.1").exists() and not (clone / "smtpguard-state").exists()
