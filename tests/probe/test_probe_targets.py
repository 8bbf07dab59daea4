"""The probe against real peers on loopback: each target gives its expected verdicts.

Adding a target = one ``PEERS`` entry in conftest.py and one ``pytest.param`` here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from smtpguard.probe.messages import SMUGGLING_VARIANTS
from tests.probe.harness import FAST, run_probe_cli

pytestmark = pytest.mark.standalone

VARIANTS = tuple(SMUGGLING_VARIANTS)
# Receivers that take a bare LF as a line end, and a CR before an LF as part of it.
LF_LINES = frozenset({"LF.LF", "LF.CRLF", "CRLF.LF"})
NUL = frozenset({"CRLF.NUL-before", "CRLF.NUL-after"})
DIALOGUE = ("banner", "ehlo", "hello", "commands", "pipelining", "starttls")


@dataclass(frozen=True)
class Expect:
    verdicts: dict[str, str]
    filter_detected: bool
    split: str = "passed"
    accepted: frozenset[str] = frozenset()
    # The split-bug target must wait out this timeout; healthy ones never do.
    timeout: float = 20.0
    extra: dict[str, str] = field(default_factory=dict)  # check id -> text in detail

    @property
    def exit_code(self) -> int:
        return 1 if "problem" in self.verdicts.values() else 0

    @property
    def no_send_exit_code(self) -> int:
        return 1 if any(self.verdicts.get(c) == "problem" for c in DIALOGUE) else 0


CLEAN = {
    "banner": "ok",
    "ehlo": "ok",
    "hello": "ok",
    "commands": "ok",
    "pipelining": "ok",
    "starttls": "info",
    "control-message": "ok",
    "split-terminator": "ok",
    # A second transaction pipelined with its message after DATA is accepted (only
    # Postfix's smtpd_forbid_unauth_pipelining refuses it): information, not a problem.
    "pipelined-data": "info",
    "smuggling": "ok",
}
PIX = {
    **CLEAN,
    "banner": "problem",
    "ehlo": "problem",
    # Every PIX-style target makes the probe greet with HELO, as Postfix would.
    "hello": "info",
    "pipelining": "info",
}

e2e = pytest.mark.e2e
TARGETS = [
    pytest.param("smtp-sink", Expect(CLEAN, False), marks=e2e, id="smtp-sink"),
    pytest.param(
        "smtp-sink-pix",
        Expect(PIX, True, extra={"banner": "Mailguard mask"}),
        marks=e2e,
        id="smtp-sink-pix",
    ),
    pytest.param("fake-clean", Expect(CLEAN, False), id="fake-clean"),
    pytest.param(
        "fake-seed-pix",
        Expect(
            {**PIX, "split-terminator": "problem"},
            True,
            split="failed",
            timeout=4.0,
            extra={"split-terminator": "duplicates", "ehlo": "500 Unrecognized"},
        ),
        id="fake-seed-pix",
    ),
    pytest.param("fake-pix-fixed", Expect(PIX, True), id="fake-pix-fixed"),
    pytest.param(
        "fake-pix-noop",
        Expect(
            {**PIX, "commands": "problem"},
            True,
            extra={"commands": "NOOP", "ehlo": "like a NOOP", "hello": "like a NOOP"},
        ),
        id="fake-pix-noop",
    ),
    pytest.param(
        "fake-pix-xxxx",
        Expect({**PIX, "commands": "problem"}, True, extra={"commands": "XXXX"}),
        id="fake-pix-xxxx",
    ),
    pytest.param(
        "fake-lockstep",
        Expect({**CLEAN, "pipelining": "problem"}, False, timeout=4.0),
        id="fake-lockstep",
    ),
    pytest.param(
        "fake-lf-eod",
        Expect(
            {**CLEAN, "smuggling": "problem"},
            False,
            accepted=LF_LINES,
        ),
        id="fake-lf-eod",
    ),
    pytest.param(
        "fake-cr-eod",
        Expect({**CLEAN, "smuggling": "problem"}, False, accepted=frozenset(VARIANTS) - NUL),
        id="fake-cr-eod",
    ),
    pytest.param(
        "fake-nul-eod",
        Expect({**CLEAN, "smuggling": "problem"}, False, accepted=NUL),
        id="fake-nul-eod",
    ),
    pytest.param(
        "gateway-mailguard",
        Expect(
            {**CLEAN, "ehlo": "problem", "hello": "info", "pipelining": "info"},
            True,
            extra={"ehlo": "500 5.5.1 Unrecognized command", "banner": "clear"},
        ),
        marks=e2e,
        id="gateway-mailguard",
    ),
    pytest.param("gateway-esmtp", Expect(CLEAN, False), marks=e2e, id="gateway-esmtp"),
    pytest.param(
        "gateway-emulate-pix",
        Expect(
            {**PIX, "commands": "problem"},
            True,
            extra={"commands": "NOOP", "ehlo": "like a NOOP", "banner": "Mailguard mask"},
        ),
        marks=e2e,
        id="gateway-emulate-pix",
    ),
    pytest.param(
        "gateway-emulate-pix-bug",
        Expect(
            {**PIX, "commands": "problem", "split-terminator": "problem"},
            True,
            split="failed",
            timeout=4.0,
            extra={"split-terminator": "duplicates"},
        ),
        marks=e2e,
        id="gateway-emulate-pix-bug",
    ),
    # Postfix before 3.9 takes a bare LF as a line end by default (CVE-2023-51764).
    pytest.param(
        "postfix",
        Expect(
            {**CLEAN, "smuggling": "problem"},
            False,
            accepted=LF_LINES | {"CRLF.CRCRLF", "CRCRLF.CRCRLF"},
            extra={"banner": "Postfix"},
        ),
        marks=e2e,
        id="postfix",
    ),
    pytest.param("postfix-strict", Expect(CLEAN, False), marks=e2e, id="postfix-strict"),
]


@pytest.mark.parametrize(("peer", "expect"), TARGETS, indirect=["peer"])
def test_json_verdicts(
    peer: tuple[str, int], expect: Expect, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = peer
    code = run_probe_cli(
        ["probe", f"{host}:{port}", "--json", "--timeout", str(expect.timeout), *FAST]
    )
    out = capsys.readouterr().out
    report = json.loads(out)
    verdicts = {c["id"]: c["verdict"] for c in report["checks"]}
    assert verdicts == expect.verdicts, report["checks"]
    assert report["filter_detected"] is expect.filter_detected
    assert report["split_terminator"] == expect.split
    assert report["smuggling"] == {
        v: "accepted" if v in expect.accepted else "rejected" for v in VARIANTS
    }
    assert report["target"] == f"{host}:{port}"
    assert report["banner"].startswith("220")
    for check in report["checks"]:
        assert check["detail"] and "\n" not in check["detail"]
    details = {c["id"]: c["detail"] for c in report["checks"]}
    for check_id, text in expect.extra.items():
        assert text in details[check_id]
    assert code == expect.exit_code


@pytest.mark.parametrize(("peer", "expect"), TARGETS, indirect=["peer"])
def test_human_no_send(
    peer: tuple[str, int], expect: Expect, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = peer
    code = run_probe_cli(["probe", f"{host}:{port}", "--no-send", "--timeout", str(expect.timeout)])
    out = capsys.readouterr().out
    assert code == expect.no_send_exit_code
    assert f"smtpguard probe {host}:{port}" in out
    assert f"filter detected: {'yes' if expect.filter_detected else 'no'}" in out
    assert "split end-of-data: untested" in out
    assert ("verdict: PROBLEM" if code else "verdict: OK") in out
    for check_id in DIALOGUE:
        assert check_id in out
