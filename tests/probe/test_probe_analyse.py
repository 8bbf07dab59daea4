"""Verdicts pinned on literal replies, without sockets."""

from __future__ import annotations

import pytest

from smtpguard.core.grammar import Reply, ReplyAssembler
from smtpguard.probe import analyse
from smtpguard.probe.model import Outcome, Verdict


def reply(raw: bytes) -> Reply:
    assembler = ReplyAssembler()
    result = None
    for line in raw.splitlines(keepends=True):
        result = assembler.add(line)
    assert result is not None
    return result


SEED = (
    b"220-*********0*****************************************************************\r\n"
    b"220 ************2*************\r\n"
)


@pytest.mark.parametrize(
    ("raw", "kind", "verdict"),
    [
        # Postfix reads the "-" of a multi-line greeting, so no PIX mask (see
        # tests/logscan/test_pix_rule.py); the asterisks still show a filter.
        (SEED, "asterisks", Verdict.PROBLEM),
        (b"220 ********\r\n", "pix-mask", Verdict.PROBLEM),
        (b"220 \t**0**2** \r\n", "clear", Verdict.OK),  # Postfix makes the tab a '?'
        (b"220 mx.example ****************** ready\r\n", "asterisks", Verdict.PROBLEM),
        (b"220 mx.example ESMTP Postfix\r\n", "clear", Verdict.OK),
        (b"220-mx.example ESMTP\r\n220 no UCE\r\n", "clear", Verdict.OK),
        (b"220 2000\r\n", "pix-mask", Verdict.PROBLEM),  # Postfix takes it for a mask
        (b"220\r\n", "pix-mask", Verdict.PROBLEM),
    ],
)
def test_banner(raw: bytes, kind: str, verdict: Verdict) -> None:
    check = analyse.banner_check(reply(raw))
    assert check.data["kind"] == kind
    assert check.verdict is verdict
    assert check.filter_sign is (verdict is Verdict.PROBLEM)


def test_banner_text_keeps_every_line() -> None:
    assert analyse.banner_text(reply(SEED)) == SEED.decode().replace("\r\n", "\n").strip()


POSTFIX_EHLO = (
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 DSN\r\n"
)


def test_ehlo_normal() -> None:
    check = analyse.ehlo_check(reply(POSTFIX_EHLO), None)
    assert check.verdict is Verdict.OK
    assert check.data["keywords"] == [
        "PIPELINING",
        "SIZE",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
    ]
    assert check.data["missing_common"] == []


def test_ehlo_refused_like_the_seed() -> None:
    check = analyse.ehlo_check(reply(b"500 Unrecognized command\r\n"), reply(b"250 mx.example\r\n"))
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert "500 Unrecognized command" in check.detail and "HELO works" in check.detail


def test_ehlo_bare_ok() -> None:
    check = analyse.ehlo_check(reply(b"250 OK\r\n"), None)
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert "no extension keywords" in check.detail


def test_ehlo_masked_keywords() -> None:
    raw = b"250-mx.example\r\n250-PIPELINING\r\n250-XXXXXXXA\r\n250 XXXB\r\n"
    check = analyse.ehlo_check(reply(raw), None)
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert check.data["masked"] == ["XXXXXXXA", "XXXB"]


def test_ehlo_xforward_is_not_a_mask() -> None:
    raw = b"250-mx.example\r\n250-XFORWARD NAME ADDR\r\n250 XCLIENT NAME\r\n"
    assert not analyse.ehlo_check(reply(raw), None).filter_sign


def test_ehlo_no_answer() -> None:
    check = analyse.ehlo_check(None, None, "no reply within 5 s")
    assert check.verdict is Verdict.PROBLEM and not check.filter_sign


U = analyse.UNKNOWN_VERB


def test_commands_plain_server() -> None:
    check = analyse.commands_check(
        {
            "NOOP": reply(b"250 2.0.0 Ok\r\n"),
            "VRFY": reply(b"252 2.0.0 postmaster\r\n"),
            "EXPN": reply(b"502 5.5.1 EXPN not available\r\n"),
            "HELP": reply(b"214 2.0.0 see RFC 5321\r\n"),
            U: reply(b"502 5.5.2 Error: command not recognized\r\n"),
        }
    )
    assert check.verdict is Verdict.OK and not check.filter_sign
    assert check.data["EXPN"].startswith("refused (502")


def test_commands_rewritten_to_noop() -> None:
    ok = b"250 OK\r\n"
    check = analyse.commands_check(
        {
            "NOOP": reply(ok),
            "VRFY": reply(ok),
            "EXPN": reply(ok),
            "HELP": reply(ok),
            U: reply(ok),
        }
    )
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert check.data["VRFY"].startswith("rewritten to NOOP")
    assert "PIX 6.x" in check.detail


def test_vrfy_answered_like_noop_alone_is_not_a_filter() -> None:
    # smtp-sink answers VRFY exactly like NOOP; the unknown verb tells them apart
    ok = b"250 2.0.0 Ok\r\n"
    check = analyse.commands_check(
        {
            "NOOP": reply(ok),
            "VRFY": reply(ok),
            U: reply(b"500 5.5.1 Error: unknown command\r\n"),
        }
    )
    assert not check.filter_sign


def test_commands_rewritten_to_xxxx() -> None:
    xxxx = b"500 5.3.3 Unrecognized command 'XXXX'\r\n"
    check = analyse.commands_check(
        {
            "NOOP": reply(b"250 OK\r\n"),
            "VRFY": reply(xxxx),
            U: reply(xxxx),
        }
    )
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert check.data["VRFY"].startswith("rewritten to XXXX")


def test_commands_noop_broken() -> None:
    check = analyse.commands_check({"NOOP": "no reply within 5 s"})
    assert check.verdict is Verdict.PROBLEM and not check.filter_sign


def test_pipelining_verdicts() -> None:
    ok = [reply(b"250 Ok\r\n")] * 3
    assert analyse.pipelining_check(True, False, ok, None).verdict is Verdict.OK
    lost = analyse.pipelining_check(True, False, None, "1 of 3 replies")
    assert lost.verdict is Verdict.PROBLEM
    assert analyse.pipelining_check(False, True, None, None).verdict is Verdict.INFO


def test_split_verdicts() -> None:
    control = analyse.Delivery(reply=reply(b"250 Ok\r\n"), seconds=0.01)
    good = analyse.Delivery(reply=reply(b"250 Ok\r\n"), seconds=0.02)
    lost = analyse.Delivery(error="no reply within 30 s")
    check, outcome = analyse.split_check(control, good, 0.5)
    assert (check.verdict, outcome) == (Verdict.OK, Outcome.PASSED)
    check, outcome = analyse.split_check(control, lost, 0.5)
    assert (check.verdict, outcome) == (Verdict.PROBLEM, Outcome.FAILED)
    assert "senders will time out and deliver duplicates" in check.detail
    check, outcome = analyse.split_check(None, None, 0.5)
    assert (check.verdict, outcome) == (Verdict.SKIPPED, Outcome.UNTESTED)
    refused = analyse.Delivery(refused=reply(b"550 no\r\n"), refused_at="RCPT")
    check, outcome = analyse.split_check(control, refused, 0.5)
    assert (check.verdict, outcome) == (Verdict.SKIPPED, Outcome.UNTESTED)


def test_control_without_reply_is_a_problem() -> None:
    check = analyse.control_check(analyse.Delivery(error="no reply within 30 s"), "", "pm")
    assert check.verdict is Verdict.PROBLEM


def test_smuggling_and_summary() -> None:
    results = {
        "LF.LF": (Outcome.ACCEPTED, "answered 250"),
        "CR.CR": (Outcome.REJECTED, "kept as content"),
    }
    check = analyse.smuggling_check(results)
    assert check.verdict is Verdict.PROBLEM and "LF.LF" in check.detail
    verdict, summary = analyse.summarise([check])
    assert verdict is Verdict.PROBLEM and "smuggling" in summary
    assert analyse.summarise([])[0] is Verdict.OK
