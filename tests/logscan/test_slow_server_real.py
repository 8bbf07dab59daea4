"""A real slow server: ``smtpguard serve`` gives up on a Postfix that takes longer to
answer the end of data than the gateway's ``data_end`` timeout.

Postfix pauses in ``smtpd_end_of_data_restrictions`` (``sleep``), the gateway gives
up first and tells the client ``451``, and Postfix then queues and delivers the
message all the same. Read alone, the gateway's log shows a message whose end of
data the server never answered; with Postfix's log beside it, logscan calls it what
it is, a slow server (the sender's retry will be a second copy), not a filter eating
the terminator.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests.logscan.conftest import scan_json
from tests.peers import GatewayProcess
from tests.postfix import MAILBOX_DOMAIN, PrivatePostfix, message, require_postfix

RCPT = f"u@{MAILBOX_DOMAIN}"


def test_a_late_250_is_a_slow_server_not_a_filter(tmp_path: Path) -> None:
    require_postfix()
    gwlog = tmp_path / "gw.jsonl"
    with PrivatePostfix("smtpguard-slow", smtpd_end_of_data_restrictions="sleep 4, permit") as pf:
        gw = GatewayProcess(
            "--upstream", pf.address, "--timeout", "data_end=1",
            "--protocol-log", str(gwlog), "--protocol-log-format", "jsonl",
            workdir=tmp_path,
        )  # fmt: skip
        try:
            host, port = gw.address.split(":")
            with smtplib.SMTP(host, int(port), timeout=30) as s:
                try:
                    s.sendmail("a@example.org", [RCPT], message("slow@example.org"))
                    answered = 250
                except smtplib.SMTPDataError as exc:
                    answered = exc.smtp_code
        finally:
            gw.stop()
        text = pf.wait_log(lambda t: "slow@example.org" in t and ": removed" in t)
        maillog = tmp_path / "maillog"
        maillog.write_text(text)
    assert answered == 451, answered  # the gateway gave up; never a 250 it did not get
    assert "status=sent" in text  # ...and Postfix delivered the message after all

    _, alone = scan_json(str(gwlog))
    assert alone["summary"]["by_kind"].get("slow_server") is None
    for order in ((gwlog, maillog), (maillog, gwlog)):
        _, doc = scan_json(*map(str, order))
        kinds = doc["summary"]["by_kind"]
        assert kinds.get("slow_server") == 1, doc["findings"]
        assert "stalled_data" not in kinds, doc["findings"]
        [slow] = [f for f in doc["findings"] if f["kind"] == "slow_server"]
        assert "<slow@example.org>" in slow["detail"] and str(maillog) in slow["detail"]
