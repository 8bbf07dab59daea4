"""A real pair: ``smtpguard serve`` with ``[dedupe]`` in front of a private Postfix.

Exact re-sends (suppressed by the gateway) and smuggling carriers (refused part-way)
each leave Postfix with ``lost connection after DATA (N bytes)``; read alone, the
maillog calls each the Mailguard signature. Read with the gateway's jsonl log,
every one is explained by its gateway event and no stall is left. A message re-sent
with one byte changed is not suppressed: Postfix, which sees only the gateway's
loopback address, gets it twice, and logscan still finds that duplicate.
"""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

from tests.logscan.conftest import scan_json
from tests.peers import GatewayProcess
from tests.postfix import MAILBOX_DOMAIN, PrivatePostfix, message, require_postfix

RCPT = f"u@{MAILBOX_DOMAIN}"
CARRIERS = (  # message data the gateway refuses part-way (docs/security.md)
    b"Subject: lf\r\n\r\nhello\nMAIL FROM:<evil@x>\r\n.\r\n",
    b"Subject: cr\r\n\r\nhello\rRCPT TO:<evil@x>\r\n.\r\n",
)


def _send(host: str, port: int, msg: bytes) -> None:
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.sendmail("a@example.org", [RCPT], msg)


def _carrier(host: str, port: int, data: bytes) -> bytes:
    """One transaction by hand; returns the reply to the end of data."""
    with socket.create_connection((host, port), timeout=30) as c:
        f = c.makefile("rb")

        def reply() -> bytes:
            while True:
                line = f.readline()
                if line[3:4] != b"-":
                    return line

        reply()
        for cmd in (b"HELO c.example\r\n", b"MAIL FROM:<a@example.org>\r\n"):
            c.sendall(cmd)
            reply()
        c.sendall(f"RCPT TO:<{RCPT}>\r\n".encode())
        reply()
        c.sendall(b"DATA\r\n")
        assert reply().startswith(b"354")
        c.sendall(data)
        final = reply()
        c.sendall(b"QUIT\r\n")
        reply()
        return final


def test_gateway_refusals_and_suppressed_copies_are_not_stalls(tmp_path: Path) -> None:
    require_postfix()
    cfg = tmp_path / "gw.toml"
    cfg.write_text('hostname = "gw.example.test"\n[dedupe]\nenabled = true\n')
    gwlog = tmp_path / "gw.jsonl"
    with PrivatePostfix("smtpguard-lsc") as pf:
        gw = GatewayProcess(
            "--config", str(cfg), "--upstream", pf.address,
            "--protocol-log", str(gwlog), "--protocol-log-format", "jsonl",
            workdir=tmp_path,
        )  # fmt: skip
        try:
            host, port = gw.address.split(":")
            original = message("orig@example.org")
            for _ in range(3):  # the first is relayed, the two re-sends are suppressed
                _send(host, int(port), original)
            for data in CARRIERS:
                assert _carrier(host, int(port), data).startswith(b"550 5.6.0")
            # one byte changed: not suppressed; Postfix gets the Message-ID twice
            _send(host, int(port), message("twice@example.org", body="hello"))
            _send(host, int(port), message("twice@example.org", body="hello!"))
        finally:
            gw.stop()
        text = pf.wait_log(
            lambda t: t.count("lost connection after DATA (") >= 4 and t.count(": removed") >= 3
        )
        maillog = tmp_path / "maillog"
        maillog.write_text(text)

    _, alone = scan_json(str(maillog))
    assert alone["summary"]["by_kind"].get("stalled_data") == 4  # the problem

    for order in ((gwlog, maillog), (maillog, gwlog)):
        code, doc = scan_json(*map(str, order))
        kinds = doc["summary"]["by_kind"]
        assert "stalled_data" not in kinds, doc["findings"]
        assert kinds["suppressed_copy"] == 2
        assert kinds["gateway_abort"] == 2
        # The re-sent message with one byte changed, once per hop: the gateway relayed
        # it twice (its log names it by Message-ID) and Postfix, behind it, which sees
        # only loopback, accepted it twice. The copies of the two hops never group.
        dups = [f for f in doc["findings"] if f["kind"] == "duplicate"]
        assert sorted(f["file"] for f in dups) == sorted(map(str, (gwlog, maillog)))
        assert all("<twice@example.org>" in f["detail"] and " 2 times" in f["detail"] for f in dups)
        corr = doc["summary"]["correlation"]
        assert corr["server_losses_explained"] == {
            "SG-DATA-BAD-BYTES": 2,
            "SG-DEDUPE-SUPPRESSED": 2,
        }
        aborts = [f for f in doc["findings"] if f["kind"] == "gateway_abort"]
        assert {f["cause"]["event"] for f in aborts} == {"SG-DATA-BAD-BYTES"}
        assert all(f["file"] == str(maillog) and f["cause"]["file"] == str(gwlog) for f in aborts)
        suppressed = [f for f in doc["findings"] if f["kind"] == "suppressed_copy"]
        assert all(f"{maillog}:" in f["detail"] for f in suppressed)
        assert code == 1
