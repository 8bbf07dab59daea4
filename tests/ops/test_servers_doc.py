"""docs/servers.md's Postfix quick start, run for real: a private Postfix configured
with the master.cf options the page gives, behind the gateway. A client from another
address (127.0.0.2) must not be able to relay through it; without the settings (the
open-relay case the start-up warning is about) it can."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess
from tests.postfix import PrivatePostfix

pytestmark = pytest.mark.e2e

DOC = Path(__file__).parents[2] / "docs" / "servers.md"
MSG = b"From: a@example.org\r\nSubject: relay test\r\n\r\nhi\r\n"
CLIENT = "127.0.0.2"  # an internet client, as far as this test is concerned
# The gateway's host address is in the server's mynetworks, as 127.0.0.1 is in
# Postfix's default.
BASE = {"mynetworks": "127.0.0.1/32"}


def _postfix_blocks() -> list[dict[str, str]]:
    """The ``-o name=value`` options of each master.cf block in the Postfix section."""
    text = DOC.read_text()
    section = text[text.index("## Postfix") : text.index("## Microsoft Exchange")]
    blocks = []
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        if "inet" not in block:
            continue
        opts = dict(re.findall(r"^\s+-o (\w+)=(\S*)$", block, re.M))
        blocks.append(opts)
    return blocks


def _try_relay(gw: GatewayProcess) -> tuple[bool, bool]:
    """(relay to an outside domain accepted, local delivery accepted) from CLIENT."""
    with smtplib.SMTP(LOOPBACK, gw.port, timeout=15, source_address=(CLIENT, 0)) as s:
        try:
            s.sendmail("a@example.org", ["someone@example.com"], MSG)
            relayed = True
        except smtplib.SMTPRecipientsRefused as exc:
            ((code, _),) = exc.recipients.values()
            assert 500 <= code < 600, exc.recipients
            relayed = False
        s.sendmail("a@example.org", ["b@example.net"], MSG)  # raises if refused
    return relayed, True


def test_the_page_has_the_xclient_and_the_no_relay_blocks() -> None:
    xclient, neither = _postfix_blocks()
    assert xclient == {"smtpd_authorized_xclient_hosts": "127.0.0.1"}
    assert neither == {"mynetworks": "", "smtpd_relay_restrictions": "reject_unauth_destination"}


@pytest.mark.parametrize("case", ["xclient", "neither", "open-relay"])
def test_postfix_quick_start_refuses_relaying_for_internet_clients(
    tmp_path: Path, case: str
) -> None:
    xclient_opts, neither_opts = _postfix_blocks()
    opts = {"xclient": xclient_opts, "neither": neither_opts, "open-relay": {}}[case]
    with PrivatePostfix(**{**BASE, **opts}) as pf:
        extra = ["--xclient"] if case == "xclient" else []
        gw = GatewayProcess("--upstream", pf.address, "--mode", "esmtp", *extra, workdir=tmp_path)
        try:
            relayed, delivered = _try_relay(gw)
        finally:
            _, out = gw.stop()
        assert delivered
        assert relayed is (case == "open-relay"), pf.log()[-3000:]
        assert ("WARNING       xclient = false" in out) is (case != "xclient"), out
        if case == "xclient":
            text = pf.wait_log(lambda t: "Relay access denied" in t, 15)
            assert f"RCPT from unknown[{CLIENT}]" in text, text[-3000:]
