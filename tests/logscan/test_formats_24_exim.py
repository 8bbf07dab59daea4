"""Issue 24: Exim sessions without ``Ci=``, counted from the lines that begin and end
them (exact counts, each explained line by line)."""

from __future__ import annotations

from pathlib import Path

from smtpguard.logscan.formats import Context, LineStats, exim

from .conftest import scan_json

REALLOGS = Path(__file__).resolve().parents[3] / "shared" / "reallogs" / "exim"


def _sessions(lines: list[bytes]) -> int:
    stats = LineStats()
    list(exim.parse(enumerate(lines, 1), Context("x", stats=stats)))
    return stats.sessions


# log_selector = +smtp_connection: a line when a session begins and one when it ends.
WITH_SMTP_CONNECTION = [
    b"2024-02-07 17:00:00 SMTP connection from [192.0.2.1]:41000 I=[198.51.100.1]:25 "
    b"(TCP/IP connection count = 1)\n",
    b"2024-02-07 17:00:01 SMTP connection from [192.0.2.2]:52000 I=[198.51.100.1]:25 "
    b"(TCP/IP connection count = 2)\n",
    b"2024-02-07 17:00:02 1rXa2b-000Abc-Cd <= a@example.org H=a.example [192.0.2.1]:41000 "
    b"I=[198.51.100.1]:25 P=esmtp S=1234 id=m1@a\n",
    b"2024-02-07 17:00:02 SMTP connection from a.example [192.0.2.1]:41000 "
    b"I=[198.51.100.1]:25 closed by QUIT\n",
    b"2024-02-07 17:00:03 SMTP connection from [192.0.2.2]:52000 I=[198.51.100.1]:25 lost\n",
    b"2024-02-07 17:00:04 SMTP connection from [192.0.2.1]:41001 I=[198.51.100.1]:25 "
    b"(TCP/IP connection count = 1)\n",
    b"2024-02-07 17:00:05 1rXa2c-000Abc-Cd Completed\n",
]


def test_begin_and_end_lines_are_one_session_each() -> None:
    # Lines 1, 2, 6 begin three sessions (192.0.2.1, .2, .1 again); lines 4 and 5 end
    # the first two, whose begins were seen: 3 sessions, the third still open.
    assert _sessions(WITH_SMTP_CONNECTION) == 3


def test_end_lines_alone_count_a_session_each() -> None:
    # Without +smtp_connection only the end of a session shows: 5 different ends.
    lines = [
        b"2016-03-21 06:38:05 [5718] no MAIL in SMTP connection from w.example "
        b"[192.0.2.15]:28890 I=[172.89.0.6]:25 D=21s C=EHLO,STARTTLS\n",
        b"2013-06-02 09:22:06 SMTP call from [192.0.2.109] dropped: too many syntax or "
        b'protocol errors (last command was "AUTH LOGIN")\n',
        b"2016-03-21 04:33:14 SMTP connection from (some.domain) [192.0.2.33] closed by "
        b"DROP in ACL\n",
        b"1999-03-02 09:44:33 SMTP command timeout on connection from [127.0.0.1] D=1s\n",
        b"2013-06-02 06:54:20 [13314] SMTP protocol synchronization error (input sent "
        b"without waiting for greeting): rejected connection from H=[192.0.2.192]:25936 "
        b'I=[1.2.3.4]:25 input="GET / HTTP/1.1"\n',
        # Not session ends: a rejected RCPT, an arrival, a message's Completed.
        b"2013-06-15 16:36:49 H=mx.example [192.0.2.116] F=<k@example.ru> rejected RCPT "
        b"<o@example.ua>: Unknown user\n",
        b"2024-02-07 17:00:02 1rXa2b-000Abc-Cd <= a@example.org H=a.example [192.0.2.1] "
        b"P=esmtp S=1234 id=m1@a\n",
        b"2024-02-07 17:00:05 1rXa2b-000Abc-Cd Completed\n",
    ]
    assert _sessions(lines) == 5


def test_ci_lines_count_by_their_id_and_not_again_by_their_end() -> None:
    lines = [
        b"2024-03-21 09:18:51 H=m.example [192.0.2.21]:43030 I=[192.0.2.2]:25 Ci=7326 "
        b"F=<u@example.tld> rejected RCPT <l@example.tld>: relay not permitted\n",
        b"2024-03-21 09:18:52 no MAIL in SMTP connection from m.example [192.0.2.21]:43030 "
        b"I=[192.0.2.2]:25 Ci=7326 D=1s C=EHLO,MAIL,RCPT,QUIT\n",
    ]
    assert _sessions(lines) == 1


def test_real_exim_logs_session_counts() -> None:
    """The session counts of the third-party logs, read by hand (see SOURCES.md)."""
    if not REALLOGS.is_dir():
        return
    expected = {
        # 4 "SMTP command timeout on connection from CALLER" and 2 "SMTP data timeout
        # … on connection from local process": six local -bs sessions, each ended by
        # its timeout ("timed out while reading local message" is -bm, not SMTP).
        "exim-testsuite-0092.log": 6,
        # Line 4 data timeout, line 6 command timeout, lines 10 and 12 "SMTP call from
        # [127.0.0.1] dropped": 4. Two more sessions show only through the test
        # harness's own notquit ACL logwrite ("NOTQUIT reason: 'connection-lost'", and
        # "'acl-drop'" after "rejected after DATA"): a configured line, not Exim's.
        "exim-testsuite-0562.log": 4,
        # Client side (deliveries, "==" and "**"): no incoming session.
        "exim-testsuite-0623.log": 0,
        # Ci= p1234, p1235, p1237, p1238, p1239, p1240, p1241, p1242, p1243, p1244,
        # p1245 (11), and line 9's "SMTP data timeout (message abandoned) on connection
        # from (tester) [127.0.0.1]" without Ci= (message 10HmbC, a session of its own).
        "exim-testsuite-0900.log": 12,
        # Ci= 30416, 8003, 8001 (its "no MAIL" end counts once, by Ci), 7326: 4.
        # Ends without Ci=: line 53 (synchronization error, rejected connection), 57,
        # 59, 61, 63 (SMTP call … dropped), 80, 82, 84, 98, 100 (no MAIL in SMTP
        # connection), 86, 88, 90, 104 (closed by DROP in ACL), 128 (dropped by
        # 'connect' ACL): 15. Total 19. (82/84 and 98/100 share a pid, which one real
        # session could not: fail2ban repeats a line with variants; each is counted.)
        "fail2ban-exim.log": 19,
        # 0615's 81 arrivals carry H= but neither Ci= nor a begin or end line: which
        # arrivals share a session the log does not say, so none is counted.
        "exim-testsuite-0615.log": 0,
    }
    got = {}
    for name in expected:
        _, out = scan_json(str(REALLOGS / name))
        got[name] = out["summary"]["files"][0]["sessions"]
    assert got == expected
