"""Issue 24: an IIS service restart ends open sessions; a header-less Exchange
SmtpSend log is read as a Send log (one session, its accepted message)."""

from __future__ import annotations

from pathlib import Path

from .conftest import scan_json

REALLOGS = Path(__file__).resolve().parents[3] / "shared" / "reallogs"

IIS_HEADER = (
    "#Software: Microsoft Internet Information Services 5.0\n"
    "#Version: 1.0\n"
    "#Date: 2006-10-09 05:00:15\n"
    "#Fields: date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method "
    "cs-uri-stem cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken "
    "cs-version cs-host cs(User-Agent) cs(Cookie) cs(Referer)\n"
)


def _iis(time: str, verb: str, query: str, status: str, size: str = "40") -> str:
    return (
        f"2006-10-09 {time} 192.0.2.106 a.example SMTPSVC1 MEE-PDC 192.168.1.2 0 {verb} - "
        f"{query} {status} 0 48 {size} 0 SMTP - - - -\n"
    )


def _files(out: dict) -> tuple:
    (f,) = out["summary"]["files"]
    return f["format"], f["lines"], f["lines_understood"], f["sessions"], f["messages"]


def test_an_iis_restart_ends_the_open_sessions(tmp_path: Path) -> None:
    # Session 1: 192.0.2.106 sends HELO, MAIL, RCPT; then the service restarts (a new
    # header block) before its DATA. Session 2: the same client again, HELO to QUIT,
    # one message (DATA 250). Read as one session, the restart was invisible and the
    # second HELO just went on with the first session: 2 sessions, 1 message.
    log = tmp_path / "ex061009.log"
    log.write_text(
        IIS_HEADER
        + _iis("05:00:15", "HELO", "+a.example", "250")
        + _iis("05:00:16", "MAIL", "+FROM:+<s@a.example>", "250")
        + _iis("05:00:16", "RCPT", "+TO:+<r@b.example>", "250")
        + IIS_HEADER.replace("05:00:15", "05:10:00")
        + _iis("05:10:05", "HELO", "+a.example", "250")
        + _iis("05:10:05", "MAIL", "+FROM:+<s@a.example>", "250")
        + _iis("05:10:05", "RCPT", "+TO:+<r@b.example>", "250")
        + _iis("05:10:06", "DATA", "+<m1@a.example>", "250", "1399")
        + _iis("05:10:06", "QUIT", "a.example", "240")
    )
    code, out = scan_json(str(log))
    assert _files(out) == ("iis", 16, 16, 2, 1)
    assert code == 0  # no stall: the first session never reached DATA


def test_an_iis_header_at_the_top_of_a_file_ends_nothing(tmp_path: Path) -> None:
    # The real Exchange 2000 log: one header block, 10 sessions (one per client
    # address, each to its QUIT), 5 DATA lines answered 250.
    path = REALLOGS / "iis" / "ossec-docs-exchange2000-w3c.log"
    if not path.exists():
        return
    _, out = scan_json(str(path))
    assert _files(out) == ("iis", 41, 41, 10, 5)


SEND_ROWS = [
    # The first two rows are elastic's SmtpSend test rows (see SOURCES.md); the
    # connection that follows is built in the same shape.
    "2024-01-25T15:14:39.460Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,0,,"
    "10.11.12.13:2525,*,None,Set Session Permissions",
    "2024-01-25T15:14:39.460Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,1,,"
    "10.11.12.13:2525,*,,attempting to connect",
    "2024-01-25T15:14:39.470Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,2,"
    "10.11.12.14:40112,10.11.12.13:2525,+,,",
    "2024-01-25T15:14:39.480Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,3,"
    "10.11.12.14:40112,10.11.12.13:2525,<,220 proxy.example Microsoft ESMTP MAIL Service ready,",
    "2024-01-25T15:14:39.481Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,4,"
    "10.11.12.14:40112,10.11.12.13:2525,>,EHLO mail.example,",
    "2024-01-25T15:14:39.482Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,5,"
    "10.11.12.14:40112,10.11.12.13:2525,<,250 proxy.example Hello [10.11.12.14] SIZE,",
    "2024-01-25T15:14:39.483Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,6,"
    "10.11.12.14:40112,10.11.12.13:2525,>,MAIL FROM:<a@example.org>,",
    "2024-01-25T15:14:39.484Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,7,"
    "10.11.12.14:40112,10.11.12.13:2525,<,250 2.1.0 Sender OK,",
    "2024-01-25T15:14:39.485Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,8,"
    "10.11.12.14:40112,10.11.12.13:2525,>,RCPT TO:<b@example.net>,",
    "2024-01-25T15:14:39.486Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,9,"
    "10.11.12.14:40112,10.11.12.13:2525,<,250 2.1.5 Recipient OK,",
    "2024-01-25T15:14:39.487Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,10,"
    "10.11.12.14:40112,10.11.12.13:2525,>,DATA,",
    "2024-01-25T15:14:39.488Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,11,"
    "10.11.12.14:40112,10.11.12.13:2525,<,354 Start mail input; end with <CRLF>.<CRLF>,",
    "2024-01-25T15:14:39.600Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,12,"
    '10.11.12.14:40112,10.11.12.13:2525,<,"250 2.6.0 <m1@example.org> Queued mail for '
    'delivery",',
    "2024-01-25T15:14:39.601Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,13,"
    "10.11.12.14:40112,10.11.12.13:2525,>,QUIT,",
    "2024-01-25T15:14:39.602Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,14,"
    "10.11.12.14:40112,10.11.12.13:2525,<,221 2.0.0 Service closing transmission channel,",
    "2024-01-25T15:14:39.603Z,Inbound Proxy Internal Send Connector,08DC1DB8591B22A0,15,"
    "10.11.12.14:40112,10.11.12.13:2525,-,,Local",
]


def test_a_header_less_send_log_is_one_session_with_its_message(tmp_path: Path) -> None:
    # One session id, 08DC1DB8591B22A0: "*" rows 0-1 before the connection, "+" at 2,
    # "-" at 15. The server answered DATA 354 and the data 250 2.6.0: one message.
    # Read as a Receive log it was 2 sessions ("*" opened one, "+" another) and no
    # message (the 250 after the data was taken for a client command).
    log = tmp_path / "SEND20240125-1.LOG"
    log.write_text("\n".join(SEND_ROWS) + "\n")
    code, out = scan_json(str(log))
    assert _files(out) == ("exchange", 16, 16, 1, 1)
    assert code == 0


def test_the_same_send_log_with_its_header_reads_the_same(tmp_path: Path) -> None:
    log = tmp_path / "SEND20240125-1.LOG"
    header = (
        "#Software: Microsoft Exchange Server\n#Version: 15.0.0.0\n"
        "#Log-type: SMTP Send Protocol Log\n#Date: 2024-01-25T15:14:39.460Z\n"
        "#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,"
        "remote-endpoint,event,data,context\n"
    )
    log.write_text(header + "\n".join(SEND_ROWS) + "\n")
    _, out = scan_json(str(log))
    assert _files(out) == ("exchange", 21, 21, 1, 1)


def test_a_header_less_receive_log_stays_a_receive_log() -> None:
    # tstrueber's excerpt: "+", "> 220", "< EHLO" … one session, one message.
    path = REALLOGS / "exchange" / "tstrueber-blog-smtpreceive-relay.log"
    if not path.exists():
        return
    _, out = scan_json(str(path))
    assert _files(out) == ("exchange", 14, 14, 1, 1)
