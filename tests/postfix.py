"""A private, loopback-only Postfix instance for end-to-end tests.

Each instance lives in its own directory under the system temp dir (Postfix's
daemons run as the ``postfix`` user and must reach it; pytest's tree is private to
root) with its own ``config_directory``, ``queue_directory`` and ``data_directory``.
It listens only on ``127.0.0.1:<free port>`` and logs to a plain file through
``maillog_file`` and ``postlogd`` (Postfix >= 3.4), so a test reads exactly what its
own instance did. It is started with ``postfix -c <conf> start`` and stopped with
``postfix -c <conf> stop``, like an administrator's instance.

Mail for ``example.net`` (``MAILBOX_DOMAIN``) is delivered by virtual(8) into one mbox
file (``PrivatePostfix.mailbox``); everything else goes to ``default_transport``:
``discard`` unless a test sets ``relayhost``/``default_transport = smtp`` to make the
instance a sending MTA.

A missing Postfix, or not running as root (the queue belongs to ``postfix``), fails
the test loudly: CI installs Postfix and runs as root (.ci/run). Every wait is
bounded; callers assert on what the wait returns.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, free_port, wait_port

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
MAILBOX_DOMAIN = "example.net"
NOBODY_UID = 65534  # virtual(8) writes the mailbox as this user

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
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
virtual   unix  - n n - - virtual
smtp      unix  - - n - - smtp
tlsmgr    unix  - - n 1000? 1 tlsmgr
postlog   unix-dgram n - n - 1 postlogd
"""

_QUEUED = re.compile(r"\]: ([0-9A-F]{6,}): message-id=<([^>]*)>")


def require_postfix() -> None:
    """Fail (never skip) when a private instance cannot run here."""
    for tool in (POSTFIX, SENDMAIL, "/usr/lib/postfix/sbin/master"):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is required: install the postfix package (.ci/run does)")
    if os.geteuid() != 0:
        pytest.fail("a private Postfix instance needs root (its queue belongs to postfix)")


class PrivatePostfix:
    """One private Postfix; ``settings`` are extra or overriding main.cf lines."""

    def __init__(self, name: str = "smtpguard-test", **settings: str) -> None:
        require_postfix()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"{name}-postfix-"))
        self.root.chmod(0o755)
        self.conf = self.root / "conf"
        self.maillog = self.root / "maillog"
        self.mailbox = self.root / "mail" / "mailbox"
        self.name = name
        self.settings = settings
        self.running = False

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def main_cf(self) -> dict[str, str]:
        r = self.root
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(r / "queue"),
            "data_directory": str(r / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "myhostname": f"{self.name}.localdomain",
            "mydomain": "localdomain",
            "myorigin": "localdomain",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "virtual_mailbox_domains": MAILBOX_DOMAIN,
            "virtual_mailbox_base": str(r / "mail"),
            "virtual_mailbox_maps": "static:mailbox",
            "virtual_uid_maps": f"static:{NOBODY_UID}",
            "virtual_gid_maps": f"static:{NOBODY_UID}",
            "default_transport": "discard:private test instance",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(r),
            "syslog_name": self.name,
            **self.settings,
        }

    def start(self) -> PrivatePostfix:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.conf.mkdir()
        for sub in ("queue", "data", "mail"):
            (self.root / sub).mkdir()
        shutil.chown(self.root / "data", "postfix")
        os.chown(self.root / "mail", NOBODY_UID, NOBODY_UID)
        lines = (f"{k} = {v}\n" for k, v in self.main_cf().items())
        (self.conf / "main.cf").write_text("".join(lines))
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=self.address))
        # Postfix reads a main.cf changed within the last second or two again and
        # again, 0.3 s apart, until it is older (it may be being edited): 2 s of
        # every start. These are complete: dated a minute back, they are read once.
        past = time.time() - 60
        for cf in ("main.cf", "master.cf"):
            os.utime(self.conf / cf, (past, past))
        r = self._postfix("start")  # postfix-script creates the queue's subdirectories
        self.running = r.returncode == 0
        if not self.running:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr}\n{self.log()}")
        try:
            wait_port(self.port)
        except TimeoutError as exc:
            raise RuntimeError(f"private Postfix not listening: {exc}\n{self.log()}") from exc

    def stop(self) -> None:
        """``postfix stop``, then wait (bounded) for the master to be gone."""
        if self.running:
            pid = self._master_pid()
            self._postfix("stop")
            deadline = time.monotonic() + 20
            while pid is not None and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid is not None and _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # the master and its daemons
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading what it did ------------------------------------------------------

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def wait_log(self, done: Callable[[str], bool], timeout: float = 30) -> str:
        """Re-read the log until ``done(text)`` or the timeout; returns the text."""
        deadline = time.monotonic() + timeout
        text = self.log()
        while not done(text) and time.monotonic() < deadline:
            time.sleep(0.1)
            text = self.log()
        return text

    def queue_ids(self, message_id: str, text: str | None = None) -> list[str]:
        """Queue IDs cleanup(8) assigned to messages with this Message-ID."""
        text = self.log() if text is None else text
        return [m[1] for m in _QUEUED.finditer(text) if m[2] == message_id]

    def outcomes(self, message_id: str, text: str | None = None) -> list[str]:
        """The delivery log lines (``status=...``) of messages with this Message-ID."""
        text = self.log() if text is None else text
        ids = set(self.queue_ids(message_id, text))
        return [
            ln
            for ln in text.splitlines()
            if "status=" in ln and any(f": {q}: to=" in ln for q in ids)
        ]

    def wait_delivered(self, message_id: str, timeout: float = 30) -> list[str]:
        """Wait until every queued copy of the message has a final status; returns
        the status lines (an empty list: nothing arrived within the timeout)."""

        def done(text: str) -> bool:
            ids = self.queue_ids(message_id, text)
            return bool(ids) and all(f": {q}: removed" in text for q in ids)

        return self.outcomes(message_id, self.wait_log(done, timeout))

    def mailbox_messages(self) -> list[bytes]:
        """The messages virtual(8) appended to the mbox file, in order."""
        if not self.mailbox.exists():
            return []
        data = self.mailbox.read_bytes()
        return [m for m in re.split(rb"(?m)^(?=From )", data) if m]

    # -- submitting ---------------------------------------------------------------

    def sendmail(self, sender: str, recipients: Iterable[str], message: bytes) -> None:
        """Inject a message with this instance's sendmail(1) (postdrop → pickup)."""
        r = subprocess.run(
            [SENDMAIL, "-C", str(self.conf), "-f", sender, "-i", "--", *recipients],
            input=message,
            capture_output=True,
            timeout=30,
        )
        assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")

    def _postfix(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.conf), command], capture_output=True, text=True, timeout=60
        )

    def _master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "queue" / "pid" / "master.pid").read_text().strip())
        return None


def _alive(pid: int) -> bool:
    """Whether the master ``pid`` or a process of its group (its daemons) still runs.

    An exited process is not running, zombie or not: the master is a daemon, so init
    reaps it, which may take a second. Without /proc: whether ``pid`` exists."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if state != "Z" and pid in (int(entry.name), int(pgrp)):
            return True
    return False


@contextlib.contextmanager
def private_postfix(name: str = "smtpguard-test", **settings: str) -> Iterator[PrivatePostfix]:
    with PrivatePostfix(name, **settings) as pf:
        yield pf


def message(message_id: str, subject: str = "smtpguard e2e", body: str = "hello") -> bytes:
    """A small RFC 5322 message with CRLF line ends and the given Message-ID."""
    return (
        f"From: a@example.org\r\nTo: b@{MAILBOX_DOMAIN}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{message_id}>\r\n\r\n{body}\r\n"
    ).encode()
