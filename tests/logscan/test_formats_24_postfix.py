"""Issue 24: Postfix under any syslog_name, sessions keyed by program name and pid,
and the error that says why a file was not read."""

from __future__ import annotations

import re
import smtplib
from datetime import datetime
from pathlib import Path

import pytest

from smtpguard.logscan.formats import Context, explain, postfix
from smtpguard.logscan.model import Delivered, Flag, Kind

from .conftest import run_logscan, scan_json


def _events(lines: list[bytes]) -> list[object]:
    return list(postfix.parse(enumerate(lines, 1), Context("x", year=2024)))


def _trail(name: bytes, pid: bytes = b"2130") -> list[bytes]:
    """One message through smtpd → cleanup → qmgr → smtp under the program NAME."""
    return [
        b"Feb  7 17:10:40 mx " + name + b"/smtpd[" + pid + b"]: connect from "
        b"a.example[192.0.2.1]\n",
        b"Feb  7 17:10:41 mx " + name + b"/smtpd[" + pid + b"]: 4Tq1nF0Qz4z9rKC: "
        b"client=a.example[192.0.2.1]\n",
        b"Feb  7 17:10:42 mx " + name + b"/cleanup[2105]: 4Tq1nF0Qz4z9rKC: message-id=<m1@a>\n",
        b"Feb  7 17:10:42 mx " + name + b"/qmgr[880]: 4Tq1nF0Qz4z9rKC: from=<s@a.example>, "
        b"size=48, nrcpt=1 (queue active)\n",
        b"Feb  7 17:10:42 mx " + name + b"/smtpd[" + pid + b"]: disconnect from "
        b"a.example[192.0.2.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5\n",
        b"Feb  7 17:10:43 mx " + name + b"/smtp[2131]: 4Tq1nF0Qz4z9rKC: to=<r@b.example>, "
        b"relay=b.example[198.51.100.7]:25, delay=1, dsn=2.0.0, status=sent (250 ok)\n",
        b"Feb  7 17:10:43 mx " + name + b"/qmgr[880]: 4Tq1nF0Qz4z9rKC: removed\n",
    ]


@pytest.mark.parametrize(
    "name",
    [b"postfix", b"mx-in", b"postfix-out", b"postfix/submission", b"postfix/10025", b"mta.2"],
)
def test_any_syslog_name_reads_alike(name: bytes, tmp_path: Path) -> None:
    lines = _trail(name)
    assert postfix.sniff(lines) == 3 * len(lines)
    log = tmp_path / "maillog"
    log.write_bytes(b"".join(lines))
    _, out = scan_json(str(log))
    (f,) = out["summary"]["files"]
    # 7 lines, all understood; 1 connect from; 2 copies: the one received (client=,
    # qmgr from=) and the one sent (smtp status=sent).
    assert (f["format"], f["lines"], f["lines_understood"], f["sessions"], f["messages"]) == (
        "postfix",
        7,
        7,
        1,
        2,
    )
    received = [e for e in _events(lines) if isinstance(e, Delivered)]
    assert {d.session for d in received} == {
        f"{name.decode()}/smtpd[2130]",
        f"{name.decode()}/smtp[2131]",
    }


def test_other_programs_with_a_slash_are_not_postfix() -> None:
    lines = [
        b"Feb  7 17:10:40 mx cyrus/imapd[12]: login: a.example [192.0.2.1] u plaintext\n",
        b"Feb  7 17:10:40 mx dovecot/auth[13]: ready\n",
    ]
    assert postfix.sniff(lines) == 0


def test_two_instances_with_the_same_pid_are_two_sessions() -> None:
    # mx-in/smtpd[100] connects at :00, then mx-out/smtpd[100] (another instance, the
    # same pid) at :05. mx-in's session is lost after DATA: its session began at :00.
    # Keyed by pid alone, the second connect would have replaced the first.
    lines = [
        b"Feb  7 10:00:00 mx mx-in/smtpd[100]: connect from a.example[192.0.2.1]\n",
        b"Feb  7 10:00:05 mx mx-out/smtpd[100]: connect from b.example[192.0.2.2]\n",
        b"Feb  7 10:00:06 mx mx-out/smtpd[100]: NOQUEUE: reject: RCPT from b.example"
        b"[192.0.2.2]: 554 5.7.1 <x@y>: Relay access denied; from=<s@b> to=<x@y> proto=ESMTP\n",
        b"Feb  7 10:01:00 mx mx-in/smtpd[100]: 4Tq1nF0Qz4z9rKC: client=a.example[192.0.2.1]\n",
        b"Feb  7 10:02:00 mx mx-in/smtpd[100]: lost connection after DATA (0 bytes) from "
        b"a.example[192.0.2.1]\n",
        b"Feb  7 10:02:01 mx mx-out/smtpd[100]: lost connection after DATA (0 bytes) from "
        b"b.example[192.0.2.2]\n",
    ]
    flags = [e for e in _events(lines) if isinstance(e, Flag)]
    # mx-in: client= logged (a recipient was accepted), so the 354 was sent: a finding
    # that starts at its own connect. mx-out: only a rejected recipient and no client=,
    # so no 354 (the pre-2.7 byte count, see the module docstring): no finding. Merged
    # by pid, mx-in's session would carry mx-out's rejection and start.
    assert [(f.kind, f.session, f.start) for f in flags] == [
        (Kind.STALLED_DATA, "mx-in/smtpd[100]", datetime(2024, 2, 7, 10, 0, 0)),
    ]


def test_the_same_name_and_pid_on_two_hosts_are_two_sessions() -> None:
    # A central syslog: hosts m1 and m2 both run postfix/smtpd[100].
    lines = [
        b"Feb  7 10:00:00 m1 postfix/smtpd[100]: connect from a.example[192.0.2.1]\n",
        b"Feb  7 10:00:05 m2 postfix/smtpd[100]: connect from b.example[192.0.2.2]\n",
        b"Feb  7 10:02:00 m1 postfix/smtpd[100]: timeout after DATA (10 bytes) from "
        b"a.example[192.0.2.1]\n",
    ]
    (flag,) = [e for e in _events(lines) if isinstance(e, Flag)]
    assert flag.start == datetime(2024, 2, 7, 10, 0, 0)


def test_the_error_names_the_programs_seen(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    log.write_bytes(
        b"Feb  7 10:00:00 mx sshd[1]: Accepted publickey for root\n"
        b"Feb  7 10:00:01 mx cron[2]: (root) CMD (true)\n"
        b"Feb  7 10:00:02 mx sshd[1]: Disconnected\n"
    )
    code, _ = run_logscan(str(log))
    assert code == 2
    why = explain(log.read_bytes().splitlines(keepends=True))
    assert why.startswith("the lines look like syslog, program names seen: sshd, cron; none ")


def test_a_named_format_error_shows_the_first_line_and_the_expected_shape() -> None:
    why = explain([b"\n", b"hello world\n"], "postfix")
    assert why.startswith("its first line reads 'hello world'; the postfix format expects ")
    assert "postfix/smtpd[2117]: connect from" in why


def test_a_postfix_log_named_as_exim_says_which_programs_it_saw() -> None:
    why = explain(_trail(b"mx-in"), "exim")
    assert why.startswith("the lines look like syslog, program names seen: mx-in/smtpd, ")
    assert "none is a known SMTP program" not in why


@pytest.mark.e2e
def test_a_private_postfix_with_its_own_syslog_name(tmp_path: Path) -> None:
    from tests.postfix import MAILBOX_DOMAIN, PrivatePostfix, message

    with PrivatePostfix("mx-in") as pf:  # main.cf: syslog_name = mx-in
        host, port = pf.address.split(":")
        with smtplib.SMTP(host, int(port), timeout=30) as s:
            s.sendmail("a@example.org", [f"b@{MAILBOX_DOMAIN}"], message("issue24@x"))
        assert pf.wait_delivered("issue24@x"), pf.log()
        text = pf.log()
    log = tmp_path / "maillog"
    log.write_text(text)
    assert re.search(r" mx-in/smtpd\[\d+\]: connect from ", text), text
    _, out = scan_json(str(log))
    (f,) = out["summary"]["files"]
    # Sessions: the smtpd "connect from" lines (the start-up port probe and ours);
    # messages: the one we sent, received once (client=, qmgr from=).
    connects = len(re.findall(r" mx-in/smtpd\[\d+\]: connect from ", text))
    assert connects >= 1
    assert (f["format"], f["sessions"], f["messages"]) == ("postfix", connects, 1)
    assert f["lines_understood"] == f["lines"], text
    assert out["summary"]["errors"] == []
