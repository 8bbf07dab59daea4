"""Which copies are one message: without a Message-ID, an envelope (even with its
size) links copies only after a stall; the gateway's copies never group with the
server's copies of the same transfers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.logscan.conftest import scan_json


def _session(sid: str, minute: int, size: int, mid: str | None, final: bool) -> list[dict]:
    ts = f"2026-03-02T10:{minute:02d}:00+00:00"
    lines: list[dict] = [
        {"event": "connect", "peer": "192.0.2.7:4000"},
        {"event": "command", "dir": "client>gw", "line": "HELO c.example"},
        {"event": "reply", "dir": "gw>client", "code": 250, "line": "250 gw"},
        {"event": "command", "dir": "client>gw", "line": "MAIL FROM:<report@example.org>"},
        {"event": "reply", "dir": "gw>client", "code": 250, "line": "250 2.1.0 Ok"},
        {"event": "command", "dir": "client>gw", "line": "RCPT TO:<ops@example.net>"},
        {"event": "reply", "dir": "gw>client", "code": 250, "line": "250 2.1.5 Ok"},
        {"event": "command", "dir": "client>gw", "line": "DATA"},
        {"event": "reply", "dir": "gw>client", "code": 354, "line": "354 go ahead"},
        {"event": "data", "dir": "client>gw", "size": size, **({"message_id": mid} if mid else {})},
    ]
    if final:
        lines.append({"event": "reply", "dir": "gw>client", "code": 250, "line": "250 2.0.0 Ok"})
    lines.append({"event": "disconnect"})
    return [{"ts": ts, "session": sid, **obj} for obj in lines]


def _write(path: Path, sessions: list[list[dict]]) -> str:
    path.write_text("".join(json.dumps(o) + "\n" for s in sessions for o in s))
    return str(path)


def test_two_reports_of_one_size_between_the_same_two_people_are_two_messages(
    tmp_path: Path,
) -> None:
    log = _write(
        tmp_path / "g.jsonl",
        [_session("a.1", 0, 900, None, True), _session("a.2", 30, 900, None, True)],
    )
    _, doc = scan_json(log)
    assert doc["summary"]["by_kind"] == {}


def test_the_same_envelope_after_a_stall_is_a_retry(tmp_path: Path) -> None:
    log = _write(
        tmp_path / "g.jsonl",
        [_session("a.1", 0, 900, None, False), _session("a.2", 5, 900, None, True)],
    )
    _, doc = scan_json(log)
    assert doc["summary"]["by_kind"] == {"duplicate": 1, "stalled_data": 1}


def test_one_message_id_twice_is_a_duplicate_and_two_are_not(tmp_path: Path) -> None:
    same = _write(
        tmp_path / "same.jsonl",
        [
            _session("a.1", 0, 900, "r1@example.org", True),
            _session("a.2", 30, 901, "r1@example.org", True),
        ],
    )
    other = _write(
        tmp_path / "other.jsonl",
        [
            _session("b.1", 0, 900, "r1@example.org", True),
            _session("b.2", 30, 900, "r2@example.org", True),
        ],
    )
    assert scan_json(same)[1]["summary"]["by_kind"] == {"duplicate": 1}
    assert scan_json(other)[1]["summary"]["by_kind"] == {}


def test_two_gateways_of_a_fleet_group_but_never_with_the_server_behind(tmp_path: Path) -> None:
    one = _write(tmp_path / "gw1.jsonl", [_session("a.1", 0, 900, "r1@example.org", True)])
    two = _write(tmp_path / "gw2.jsonl", [_session("b.1", 9, 900, "r1@example.org", True)])
    assert scan_json(one, two)[1]["summary"]["by_kind"] == {"duplicate": 1}
    server = tmp_path / "maillog"
    server.write_text(
        "Mar  2 10:00:01 mx postfix/smtpd[100]: connect from localhost[127.0.0.1]\n"
        "Mar  2 10:00:01 mx postfix/smtpd[100]: 4AB12C: client=localhost[127.0.0.1]\n"
        "Mar  2 10:00:01 mx postfix/cleanup[101]: 4AB12C: message-id=<r1@example.org>\n"
        "Mar  2 10:00:01 mx postfix/qmgr[102]: 4AB12C: from=<report@example.org>, size=900, "
        "nrcpt=1 (queue active)\n"
        "Mar  2 10:00:02 mx postfix/virtual[103]: 4AB12C: to=<ops@example.net>, relay=virtual, "
        "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (delivered to maildir)\n"
        "Mar  2 10:00:02 mx postfix/qmgr[102]: 4AB12C: removed\n"
    )
    # The gateway relayed it once and the server accepted it once: one copy per hop.
    assert scan_json("--year", "2026", one, str(server))[1]["summary"]["by_kind"] == {}


def test_a_sender_relaying_through_a_gateway_on_loopback_is_not_a_content_filter(
    tmp_path: Path,
) -> None:
    """The lab's sender: every attempt goes to 127.0.0.1 and stalls; nothing comes
    back from loopback, so nothing is a content filter's hand-off."""
    lines = [
        "Mar  2 10:00:00 lab lab-sender/pickup[1]: 9A9A9A: uid=0 from=<a@example.org>",
        "Mar  2 10:00:00 lab lab-sender/cleanup[2]: 9A9A9A: message-id=<seed-1@lab.test>",
        "Mar  2 10:00:00 lab lab-sender/qmgr[3]: 9A9A9A: from=<a@example.org>, size=253, "
        "nrcpt=1 (queue active)",
    ]
    for n, minute in enumerate((0, 5, 10)):
        lines.append(
            f"Mar  2 10:{minute:02d}:03 lab lab-sender/smtp[{10 + n}]: 9A9A9A: "
            "to=<b@example.net>, relay=127.0.0.1[127.0.0.1]:2525, delay=3, "
            "delays=0/0/0/3, dsn=4.4.2, status=deferred (conversation with "
            "127.0.0.1[127.0.0.1] timed out while sending end of data -- message may be "
            "sent more than once)"
        )
    log = tmp_path / "maillog"
    log.write_text("\n".join(lines) + "\n")
    _, doc = scan_json("--year", "2026", str(log))
    assert doc["summary"]["by_kind"] == {"duplicate": 1, "stalled_data": 3}
    assert doc["summary"]["set_aside"] == {}
    [dup] = [f for f in doc["findings"] if f["kind"] == "duplicate"]
    assert "<seed-1@lab.test>" in dup["detail"] and "3 times" in dup["detail"]


def test_a_content_filter_reinjecting_with_xforward_is_no_duplicate(tmp_path: Path) -> None:
    """amavis-style: handed to 127.0.0.1:10024, re-injected on :10025 with XFORWARD
    (``orig_client=`` names the first client), then relayed on. One message."""
    p = "Mar  2 10:00:0{} mx postfix/{}: {}"
    lines = [
        p.format(0, "smtpd[100]", "connect from mail.example.org[192.0.2.9]"),
        p.format(0, "smtpd[100]", "A1A1A1: client=mail.example.org[192.0.2.9]"),
        p.format(0, "cleanup[9]", "A1A1A1: message-id=<f@example.org>"),
        p.format(0, "qmgr[8]", "A1A1A1: from=<a@example.org>, size=500, nrcpt=1 (queue active)"),
        p.format(1, "smtpd[200]", "connect from localhost[127.0.0.1]"),
        p.format(
            1,
            "smtpd[200]",
            "B2B2B2: client=localhost[127.0.0.1], orig_queue_id=A1A1A1, "
            "orig_client=mail.example.org[192.0.2.9]",
        ),
        p.format(1, "cleanup[9]", "B2B2B2: message-id=<f@example.org>"),
        p.format(1, "qmgr[8]", "B2B2B2: from=<a@example.org>, size=900, nrcpt=1 (queue active)"),
        p.format(
            1,
            "smtp[300]",
            "A1A1A1: to=<b@example.net>, relay=127.0.0.1[127.0.0.1]:10024, delay=1, "
            "delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok, id=1, from "
            "MTA([127.0.0.1]:10025): 250 2.0.0 Ok: queued as B2B2B2)",
        ),
        p.format(1, "qmgr[8]", "A1A1A1: removed"),
        p.format(
            2,
            "smtp[301]",
            "B2B2B2: to=<b@example.net>, relay=mx.example.net[198.51.100.2]:25, delay=1, "
            "delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 77)",
        ),
        p.format(2, "qmgr[8]", "B2B2B2: removed"),
    ]
    log = tmp_path / "maillog"
    log.write_text("\n".join(lines) + "\n")
    _, doc = scan_json("--year", "2026", str(log))
    assert doc["summary"]["by_kind"] == {}, doc["findings"]
    assert doc["summary"]["set_aside"] == {"loopback_relay": 1}
