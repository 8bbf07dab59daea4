"""The probe against the gateway's own PIX emulation, as `serve --emulate pix` runs it.

Real processes on loopback: ``smtpguard serve --emulate pix`` relaying to its
built-in mailbox (aiosmtpd, which answers MAIL before HELO with 503, as the servers
behind a real PIX do), in both rewrite modes, with and without CSCds90792. The probe
must greet with HELO and run every test: none untested, the split terminator
dropped exactly when the bug is on, and the mailbox must hold every message the
path acknowledged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtpguard.probe.messages import SMUGGLING_VARIANTS
from tests.peers import GatewayProcess
from tests.probe.harness import FAST, run_probe_cli

pytestmark = [pytest.mark.e2e, pytest.mark.standalone]


@pytest.mark.parametrize("bug", [False, True], ids=["fixed", "split-eod"])
@pytest.mark.parametrize(
    ("rewrite", "cause", "reason"),
    [
        ("noop", "not-ehlo-reply", "EHLO answered like a NOOP (250 OK"),
        ("xxxx", "ehlo-refused", 'EHLO refused (500 Error: command "XXXX" not recognized)'),
    ],
)
def test_probe_through_the_pix_emulation(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rewrite: str,
    cause: str,
    reason: str,
    bug: bool,
) -> None:
    maildir = tmp_path / "mail"
    args = ["--emulate", "pix", "--emulate-rewrite", rewrite, "--maildir", str(maildir)]
    if bug:
        args += ["--emulate-bug", "split-eod"]
    gw = GatewayProcess(*args, workdir=tmp_path)
    try:
        code = run_probe_cli(
            [
                "probe",
                gw.address,
                "--json",
                "--to",
                "you@example.test",
                "--timeout",
                "4",
                "--maildir",
                str(maildir),
                "--delivery-timeout",
                "15",
                *FAST,
            ]
        )
    finally:
        gw.stop()
    report = json.loads(capsys.readouterr().out)
    checks = {c["id"]: c for c in report["checks"]}
    assert report["hello"]["verb"] == "HELO" and report["hello"]["cause"] == cause
    assert reason in report["hello"]["detail"]
    assert "HELO works" in checks["ehlo"]["detail"]
    assert not [c for c in checks.values() if c["verdict"] == "skipped"], report["checks"]
    assert checks["control-message"]["verdict"] == "ok"
    assert checks["delivery"]["verdict"] == "ok", checks["delivery"]
    assert checks["pipelined-data"]["verdict"] in ("ok", "info")
    assert report["smuggling"] == dict.fromkeys(SMUGGLING_VARIANTS, "rejected")
    assert {v["smuggled"] for v in report["variants"].values()} == {"not-delivered"}
    if bug:
        assert report["split_terminator"] == "failed"
        assert "split across packets is dropped" in checks["split-terminator"]["detail"]
    else:
        assert report["split_terminator"] == "passed"
    assert report["filter_detected"] is True and code == 1
