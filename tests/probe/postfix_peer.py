"""A private, loopback-only Postfix instance for the probe tests.

Own config_directory and queue_directory under the test's tmp dir, one smtpd on
127.0.0.1:PORT, every message discarded, log to a file in the tmp dir. The master runs
in the foreground (``-d``) as a child of the test and is stopped with SIGTERM. Needs
root (Postfix's queue layout belongs to the postfix user) and the postfix package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

MASTER = "/usr/lib/postfix/sbin/master"
QUEUE_SUBDIRS = (
    "public",
    "private",
    "maildrop",
    "incoming",
    "active",
    "deferred",
    "bounce",
    "defer",
    "flush",
    "hold",
    "corrupt",
    "saved",
    "trace",
)

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def _main_cf(root: Path, extra: dict[str, str]) -> str:
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(root / "queue"),
        "data_directory": str(root / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "myhostname": "postfix-probe-test.localdomain",
        "mydomain": "localdomain",
        "mydestination": "",
        "mynetworks": "127.0.0.0/8",
        "relay_domains": "",
        "default_transport": "discard:probe test",
        "local_transport": "discard:probe test",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "maillog_file": str(root / "maillog"),
        "maillog_file_prefixes": str(root),
        "syslog_name": "postfix-probe-test",
        **extra,
    }
    return "".join(f"{k} = {v}\n" for k, v in settings.items())


@contextlib.contextmanager
def private_postfix(port: int, master_extra: str = "", **extra: str) -> Iterator[Path]:
    """Start Postfix listening on 127.0.0.1:port; yields the log file path.

    The instance lives in a fresh directory under the system temp dir, not under
    pytest's tmp_path: Postfix's own processes run as the postfix user and must be
    able to reach the queue, and pytest's tree is private to root.
    """
    if shutil.which(MASTER) is None:
        pytest.fail(f"{MASTER} is required (Debian package postfix)")
    if os.geteuid() != 0:
        pytest.fail("a private Postfix instance needs root (its queue is owned by postfix)")
    root = Path(tempfile.mkdtemp(prefix="smtpguard-probe-postfix-"))
    root.chmod(0o755)
    try:
        with _instance(root, port, extra, master_extra) as log:
            yield log
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _instance(
    root: Path, port: int, extra: dict[str, str], master_extra: str = ""
) -> Iterator[Path]:
    conf, queue, data = root / "conf", root / "queue", root / "data"
    for d in (conf, queue / "pid", data):
        d.mkdir(parents=True)
    shutil.chown(data, "postfix")
    for name in QUEUE_SUBDIRS:
        sub = queue / name
        sub.mkdir()
        shutil.chown(sub, "postfix", "postdrop" if name in ("public", "maildrop") else None)
        sub.chmod({"public": 0o710, "maildrop": 0o730}.get(name, 0o700))
    (conf / "main.cf").write_text(_main_cf(root, extra))
    (conf / "master.cf").write_text(MASTER_CF.format(port=port) + master_extra)
    proc = subprocess.Popen(
        [MASTER, "-c", str(conf), "-d"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        from tests.probe.conftest import wait_listening

        try:
            wait_listening("127.0.0.1", port, proc)
        except RuntimeError as exc:
            log = root / "maillog"
            tail = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"private Postfix did not start: {exc}\n{tail}") from exc
        yield root / "maillog"
    finally:
        proc.terminate()
        proc.wait(15)
