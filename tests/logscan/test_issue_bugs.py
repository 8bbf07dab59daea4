"""One test per defect of the real-log issue, on literal lines (no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.logscan.timefmt import SyslogClock

from .conftest import run_logscan, scan_json


def _log(tmp_path: Path, name: str, *lines: str, bom: bool = False) -> str:
    path = tmp_path / name
    data = "".join(f"{ln}\n" for ln in lines).encode()
    path.write_bytes(b"\xef\xbb\xbf" + data if bom else data)
    return str(path)


def _kinds(doc: dict) -> dict[str, int]:
    return doc["summary"]["by_kind"]


def test_exim_498_lost_connection_with_connection_id_is_a_stall(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        "mainlog",
        "2024-05-01 10:00:00 10HmbD-000000005vi-0000 SMTP connection Ci=1240 from "
        "(tester) [192.0.2.7] lost while reading message data",
    )
    code, doc = scan_json(log)
    assert doc["summary"]["files"][0]["format"] == "exim"
    assert _kinds(doc) == {"stalled_data": 1} and code == 1
    assert doc["findings"][0]["peer"] == "(tester) [192.0.2.7]"
    assert doc["summary"]["files"][0]["sessions"] == 1  # Ci= is a connection id


def test_exim_log_without_arrivals_is_detected(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        "mainlog",
        "2024-05-01 10:00:00 exim 4.98 daemon started: pid=1234, -q30m, listening for SMTP",
        "2024-05-01 10:00:05 SMTP command timeout on connection from [192.0.2.8] D=5m",
    )
    code, doc = scan_json(log)
    assert doc["summary"]["files"][0]["format"] == "exim" and code == 0


IIS_FIELDS = (
    "#Fields: c-ip cs-username s-sitename s-computername s-ip s-port cs-method "
    "cs-uri-query sc-win32-status cs-bytes cs-version cs(User-Agent) cs(Referer)"
)


def test_iis_without_sc_status_is_not_a_stall(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        "ex.log",
        IIS_FIELDS,
        "192.0.2.9 app SMTPSVC1 MX 192.0.2.1 0 EHLO +app 0 18 SMTP - -",
        "192.0.2.9 app SMTPSVC1 MX 192.0.2.1 0 MAIL +FROM:<a@b.example> 0 47 SMTP - -",
        "192.0.2.9 app SMTPSVC1 MX 192.0.2.1 0 RCPT +TO:<c@d.example> 0 32 SMTP - -",
        "192.0.2.9 app SMTPSVC1 MX 192.0.2.1 0 DATA <m1@app> 0 2560 SMTP - -",
    )
    code, doc = scan_json(log)
    assert doc["findings"] == [] and code == 0
    assert doc["summary"]["files"][0]["messages"] == 1  # read as accepted


def test_iis_without_sc_status_but_a_timeout_is_a_stall(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        "ex.log",
        IIS_FIELDS,
        "192.0.2.9 app SMTPSVC1 MX 192.0.2.1 0 HELO +app 0 18 SMTP - -",
        "192.0.2.9 app SMTPSVC1 MX 192.0.2.1 0 DATA <m1@app> 10060 2560 SMTP - -",
    )
    assert _kinds(scan_json(log)[1]) == {"stalled_data": 1}


MSGTRK_HEAD = (
    "#Software: Microsoft Exchange Server",
    "#Version: 15.01.2375.007",
    "#Log-type: Message Tracking Log",
    "#Date: 2024-02-07T17:00:00.000Z",
    "#Fields: date-time,client-ip,client-hostname,server-ip,server-hostname,source-context,"
    "connector-id,source,event-id,internal-message-id,message-id,network-message-id,"
    "recipient-address,recipient-status,total-bytes,recipient-count,related-recipient-address,"
    "reference,message-subject,sender-address,return-path,message-info,directionality,"
    "tenant-id,original-client-ip,original-server-ip,custom-data,transport-traffic-type,"
    "log-id,schema-version",
)


def _track(t: str, event: str, internal: int, msgid: str = "<inv-1@partner.example>") -> str:
    src = "SMTP" if event == "RECEIVE" else "STOREDRIVER"
    return (
        f"2024-02-07T{t}.000Z,203.0.113.25,mail.partner.example,192.0.2.25,EX1,,"
        f"EX1\\Default EX1,{src},{event},{internal},{msgid},"
        f"0b7099ea-cb95-1234-328e-08dc5f139ac{internal % 10},ap@domain2.example,,48211,1,,,"
        f"Invoice,billing@partner.example,billing@partner.example,,Incoming,,,,,,,"
    )


def test_message_tracking_is_detected_and_duplicates_found(tmp_path: Path) -> None:
    rows = []
    for i, t in enumerate(("17:00:05", "17:30:05", "18:00:05")):
        rows += [_track(t, "RECEIVE", 100 + i), _track(t, "DELIVER", 100 + i)]
    code, doc = scan_json(_log(tmp_path, "MSGTRK20240207-1.LOG", *MSGTRK_HEAD, *rows))
    assert doc["summary"]["files"][0]["format"] == "msgtrk"
    # received three times and delivered three times into one mailbox: two duplicates,
    # one per event, never a RECEIVE paired with its own DELIVER
    dups = doc["findings"]
    assert [f["kind"] for f in dups] == ["duplicate", "duplicate"] and code == 1
    assert all("inv-1@partner.example" in f["detail"] and "3 times" in f["detail"] for f in dups)
    assert all("regular" in f["detail"] for f in dups)


def test_message_tracking_receive_and_deliver_of_one_copy_is_no_duplicate(
    tmp_path: Path,
) -> None:
    rows = [_track("17:00:05", "RECEIVE", 100), _track("17:00:06", "DELIVER", 100)]
    code, doc = scan_json(_log(tmp_path, "MSGTRK.LOG", *MSGTRK_HEAD, *rows))
    assert doc["findings"] == [] and code == 0
    # without its header, by its rows
    code, doc = scan_json(_log(tmp_path, "rows.log", *rows))
    assert doc["summary"]["files"][0]["format"] == "msgtrk"


P = "Feb  7 17:01:20 mx postfix/smtpd[2117]: "


@pytest.mark.parametrize(
    ("line", "stall"),
    [
        ("NOQUEUE: lost connection after DATA (2310 bytes) from a.example[192.0.2.10]", True),
        ("4Tq1nF0Qz4z9rKC: timeout after DATA (120 bytes) from a.example[192.0.2.10]", True),
        ("timeout after DATA (120 bytes) from a.example[192.0.2.10]", True),  # < 3.10
        ("lost connection after DATA from a.example[192.0.2.10]", False),  # no 354 sent
        ("NOQUEUE: lost connection after DATA from a.example[192.0.2.10]", False),
        ("lost connection after BDAT (512 bytes) from a.example[192.0.2.10]", False),
    ],
)
def test_postfix_data_stall_forms(tmp_path: Path, line: str, stall: bool) -> None:
    code, doc = scan_json(_log(tmp_path, "maillog", P + line))
    assert _kinds(doc) == ({"stalled_data": 1} if stall else {}) and code == int(stall)
    assert doc["summary"]["files"][0]["lines_understood"] == 1


def test_postfix_byte_count_after_a_refused_data_is_not_a_stall(tmp_path: Path) -> None:
    # Postfix < 2.7 logged the count after a DATA it refused: no recipient accepted.
    log = _log(
        tmp_path,
        "maillog",
        P + "connect from spam.example[198.51.100.3]",
        P + "NOQUEUE: reject: RCPT from spam.example[198.51.100.3]: 450 4.2.0 <a@b.example>: "
        "Recipient address rejected: Greylisted; from=<x@y.example> to=<a@b.example>",
        P + "lost connection after DATA (0 bytes) from spam.example[198.51.100.3]",
    )
    assert _kinds(scan_json(log)[1]) == {}


def test_iis_pix_rewritten_ehlo_is_a_finding(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        "ex.log",
        "#Fields: date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method "
        "cs-uri-stem cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken",
        "2006-10-09 05:01:04 24.95.255.99 - SMTPSVC1 MEE 192.168.1.2 0 xxxx - +rr.com 500 0 32 "
        "11 0",
        "2006-10-09 05:01:04 24.95.255.99 - SMTPSVC1 MEE 192.168.1.2 0 QUIT - - 240 375 68 4 16",
    )
    code, doc = scan_json(log)
    (f,) = doc["findings"]
    assert f["kind"] == "pix_rewrite" and code == 1
    assert "Mailguard" in f["detail"] and "'XXXX'" in f["detail"]


def test_sessions_are_counted_for_postfix_and_zeek(tmp_path: Path) -> None:
    pf = _log(tmp_path, "maillog", P + "connect from a.example[192.0.2.1]", P + "disconnect from x")
    assert scan_json(pf)[1]["summary"]["files"][0]["sessions"] == 1
    zeek = _log(
        tmp_path,
        "smtp.json",
        '{"ts":1.0,"uid":"C1","id.orig_h":"192.0.2.1","id.resp_h":"192.0.2.2","last_reply":"221"}',
        '{"ts":2.0,"uid":"C1","id.orig_h":"192.0.2.1","id.resp_h":"192.0.2.2","last_reply":"221"}',
        '{"ts":3.0,"uid":"C2","id.orig_h":"192.0.2.1","id.resp_h":"192.0.2.2","last_reply":"221"}',
    )
    assert scan_json(zeek)[1]["summary"]["files"][0]["sessions"] == 2


def test_newest_first_input_gives_positive_intervals_and_no_fake_sender(tmp_path: Path) -> None:
    line = (
        "{t} mail postfix/smtp[1]: 84FC51F660C: to=<x@tiscali.example>, relay=etb[192.0.2.5]:25, "
        "dsn=4.4.2, status=deferred (lost connection with etb[192.0.2.5] while sending end of "
        "data -- message may be sent more than once)"
    )
    log = _log(
        tmp_path,
        "maillog",
        line.format(t="2017-11-20T23:33:33+00:00"),
        line.format(t="2017-11-20T22:23:33+00:00"),
    )
    (dup,) = [f for f in scan_json(log)[1]["findings"] if f["kind"] == "duplicate"]
    assert "(+1h10m00s)" in dup["detail"] and "(-" not in dup["detail"]
    assert "from <" not in dup["detail"] and dup["time"] == "2017-11-20T22:23:33"


def test_utf8_bom_does_not_drop_the_first_ims_session(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        "ims.log",
        "2/7/01 5:01:20 PM : A connection was accepted from mail.domain1.com",
        "2/7/01 5:01:21 PM : <<< DATA",
        "2/7/01 5:01:21 PM : >>> 354 Send data. End with CRLF.CRLF",
        "2/7/01 5:05:44 PM : A connection was accepted from mail.domain3.com",
        bom=True,
    )
    code, doc = scan_json(log)
    assert doc["summary"]["files"][0]["sessions"] == 2 and code == 1
    assert _kinds(doc) == {"stalled_data": 1} and doc["findings"][0]["peer"] == "mail.domain1.com"


def test_unsorted_syslog_input_does_not_make_the_year_drift() -> None:
    clock = SyslogClock(2024)
    months = [b"Apr", b"Feb", b"Jul", b"Oct", b"Feb", b"Sep", b"Dec", b"Jan", b"Dec", b"Feb"]
    years = [clock.parse(m, b"1", b"00:00:00").year for m in months]  # type: ignore[union-attr]
    assert years == [2024, 2024, 2024, 2024, 2025, 2024, 2024, 2025, 2024, 2025]
    sorted_clock = SyslogClock(2024)  # a rotated log over the new year still rolls over
    assert [sorted_clock.parse(m, b"1", b"0:0:0").year for m in (b"Dec", b"Jan")] == [2024, 2025]  # type: ignore[union-attr]


def test_bad_input_prints_no_empty_tables_and_no_clean_bill(tmp_path: Path) -> None:
    junk = tmp_path / "garbage.bin"
    junk.write_bytes(b"\x00\xff\x13 nothing here\n" * 50)
    code, out = run_logscan("--format", "ims", str(junk))
    assert code == 2 and "No findings" not in out and "Inputs" not in out
    ok = _log(tmp_path, "ims.log", "2/7/01 5:01:20 PM : A connection was accepted from a.example")
    code, out = run_logscan(ok, "/nonexistent/log")
    assert code == 2 and "No findings." not in out
    assert "could not be read" in out
