"""The probe's smuggling verdicts against what real receivers really delivered.

For each receiver (a private Postfix with each ``smtpd_forbid_bare_newline`` setting
this Postfix has, smtp-sink, the aiosmtpd built-in mailbox, and the gateway in each
mode in front of Postfix) the probe runs with the receiver's mailbox, and the test
then reads that mailbox itself (and Postfix's own log): for every variant the
probe's ``smuggled`` must be what was found there, and ``end_of_data`` must be
``accepted`` exactly for the variants the receiver is known to take.

Postfix 3.7.11 (Debian 12) knows ``smtpd_forbid_bare_newline = no | yes | normalize |
reject`` (``normalize`` since 3.7.10; ``yes`` is its alias there). Its default
exclusions (``$mynetworks``) would exempt loopback, so they are emptied.
"""

from __future__ import annotations

import contextlib
import email.parser
import json
import mailbox
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpguard.probe.messages import SMUGGLING_VARIANTS
from tests.peers import GatewayProcess, SmtpSink, free_port, wait_port
from tests.postfix import MAILBOX_DOMAIN, PrivatePostfix
from tests.probe.harness import FAST, run_probe_cli

pytestmark = [pytest.mark.e2e, pytest.mark.standalone]

RCPT = f"probe@{MAILBOX_DOMAIN}"
# Postfix < 3.9 with its defaults: a bare LF ends a line, and a CR before the LF is
# dropped, so ".\r\r\n" is a dot line too.
POSTFIX_DEFAULT_TAKES = frozenset({"LF.LF", "LF.CRLF", "CRLF.LF", "CRLF.CRCRLF", "CRCRLF.CRCRLF"})
STRICT = {"smtpd_forbid_bare_newline_exclusions": ""}


def message_ids(raw_messages: list[bytes]) -> set[str]:
    """Message-IDs of raw messages, parsed with the standard library alone."""
    parser = email.parser.BytesHeaderParser()
    ids = set()
    for raw in raw_messages:
        mid = parser.parsebytes(raw).get("Message-ID", "")
        ids.add(mid.strip().strip("<>"))
    return ids


def queued(pf: PrivatePostfix, mid: str, log: str) -> bool:
    """Postfix queued the message: qmgr(8) logged its queue ID (cleanup(8) logs the
    Message-ID as soon as it reads the header, also for a message that is then
    aborted)."""
    return any(re.search(rf"qmgr\[\d+\]: {q}: from=", log) for q in pf.queue_ids(mid, log))


@dataclass
class Target:
    address: str
    probe_box: list[str]  # --maildir DIR or --mbox FILE
    delivered: Callable[[], set[str]]  # Message-IDs really delivered, read by the test
    postfix: PrivatePostfix | None = None


@contextlib.contextmanager
def postfix_target(**settings: str) -> Iterator[Target]:
    with PrivatePostfix("smtpguard-matrix", **settings) as pf:
        yield Target(
            pf.address,
            ["--mbox", str(pf.mailbox)],
            lambda: message_ids(pf.mailbox_messages()),
            pf,
        )


@contextlib.contextmanager
def gateway_target(tmp: Path, args: list[str], **settings: str) -> Iterator[Target]:
    with postfix_target(**settings) as pf:
        gw = GatewayProcess("--upstream", pf.address, *args, workdir=tmp)
        try:
            yield Target(gw.address, pf.probe_box, pf.delivered, pf.postfix)
        finally:
            gw.stop()


@contextlib.contextmanager
def smtp_sink_target(tmp: Path) -> Iterator[Target]:
    sink = SmtpSink(tmp)
    try:
        yield Target(
            sink.address,
            ["--maildir", str(sink.dumps)],
            lambda: message_ids(sink.messages()),
        )
    finally:
        sink.stop()


@contextlib.contextmanager
def aiosmtpd_target(tmp: Path) -> Iterator[Target]:
    port = free_port()
    maildir = tmp / "Maildir"
    command = [sys.executable, "-m", "smtpguard", "sink", "--maildir", str(maildir)]
    proc = subprocess.Popen(
        [*command, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc)
        box = mailbox.Maildir(maildir, create=False)
        yield Target(
            f"127.0.0.1:{port}",
            ["--maildir", str(maildir)],
            lambda: message_ids([m.as_bytes() for m in box]),
        )
    finally:
        proc.terminate()
        proc.wait(10)


def normalize_config(tmp: Path) -> list[str]:
    path = tmp / "normalize.toml"
    path.write_text('mode = "esmtp"\nsmuggling = "normalize"\n')
    return ["--config", str(path)]


Factory = Callable[[Path], contextlib.AbstractContextManager[Target]]
MATRIX: list[tuple[str, Factory, frozenset[str]]] = [
    ("postfix-defaults", lambda _t: postfix_target(), POSTFIX_DEFAULT_TAKES),
    (
        "postfix-forbid-yes",
        lambda _t: postfix_target(smtpd_forbid_bare_newline="yes", **STRICT),
        frozenset(),
    ),
    (
        "postfix-forbid-normalize",
        lambda _t: postfix_target(smtpd_forbid_bare_newline="normalize", **STRICT),
        frozenset(),
    ),
    (
        "postfix-forbid-reject",
        lambda _t: postfix_target(smtpd_forbid_bare_newline="reject", **STRICT),
        frozenset(),
    ),
    ("smtp-sink", smtp_sink_target, frozenset()),
    ("aiosmtpd-sink", aiosmtpd_target, frozenset()),
    # The gateway in front of the weakest Postfix: whatever reaches it is delivered.
    ("gateway-mailguard", lambda t: gateway_target(t, []), frozenset()),
    ("gateway-esmtp", lambda t: gateway_target(t, ["--mode", "esmtp"]), frozenset()),
    ("gateway-normalize", lambda t: gateway_target(t, normalize_config(t)), frozenset()),
    # The combination in which a normalising gateway once created an end of data.
    (
        "gateway-normalize-postfix-reject",
        lambda t: gateway_target(
            t, normalize_config(t), smtpd_forbid_bare_newline="reject", **STRICT
        ),
        frozenset(),
    ),
]


@pytest.mark.parametrize(("factory", "takes"), [pytest.param(f, t, id=n) for n, f, t in MATRIX])
def test_verdicts_match_deliveries(
    factory: Factory, takes: frozenset[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with factory(tmp_path) as target:
        options = ["--timeout", "20", "--delivery-timeout", "60", *FAST]
        code = run_probe_cli(
            ["probe", target.address, "--json", "--to", RCPT, *target.probe_box, *options]
        )
        report = json.loads(capsys.readouterr().out)
        delivered = target.delivered()
        log = ""
        if target.postfix is not None:
            pf = target.postfix
            # Every delivered message was queued: wait for qmgr(8)'s log lines.
            log = pf.wait_log(lambda text: all(queued(pf, m, text) for m in delivered))
    checks = {c["id"]: c for c in report["checks"]}
    assert checks["delivery"]["verdict"] == "ok", checks["delivery"]
    variants = report["variants"]
    assert set(variants) == set(SMUGGLING_VARIANTS)
    for name, v in variants.items():
        truth = v["smuggled_message_id"] in delivered
        assert v["smuggled"] == ("delivered" if truth else "not-delivered"), (name, v)
        assert (v["end_of_data"] == "accepted") is (name in takes), (name, v)
        assert v["carrier_message_id"] in delivered or v["replies"][-1][0] in "45", (name, v)
        if target.postfix is not None:
            assert queued(target.postfix, v["smuggled_message_id"], log) is truth, (name, v)
    assert report["smuggling"] == {
        n: "accepted" if n in takes else "rejected" for n in SMUGGLING_VARIANTS
    }
    assert checks["smuggling"]["verdict"] == ("problem" if takes else "ok")
    assert (code == 1) is bool(takes) or checks["ehlo"]["verdict"] == "problem"
