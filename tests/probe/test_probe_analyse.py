"""Verdicts pinned on literal replies, without sockets."""

from __future__ import annotations

import pytest

from smtpguard.core.grammar import Reply, ReplyAssembler
from smtpguard.probe import analyse, messages
from smtpguard.probe.model import Delivered, Outcome, VariantResult, Verdict

pytestmark = pytest.mark.standalone


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


def test_ehlo_answered_like_a_noop() -> None:
    """PIX 6.x: EHLO overwritten with NOOP, the server answers the NOOP."""
    check = analyse.ehlo_check(reply(b"250 OK\r\n"), reply(b"250 mx.example\r\n"))
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert "like a NOOP" in check.detail and "HELO works" in check.detail


def test_ehlo_bare_reply_naming_the_server() -> None:
    check = analyse.ehlo_check(reply(b"250 mx.example.org\r\n"), None)
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert "no extension keywords" in check.detail


def test_ehlo_masked_keywords() -> None:
    """The dialogue seen in the wild behind a Cisco filter (2006)."""
    raw = b"250-mx.example\r\n250-PIPELINING\r\n250-XXXXXXXA\r\n250 XXXB\r\n"
    check = analyse.ehlo_check(reply(raw), None)
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert check.data["masked"] == ["XXXXXXXA", "XXXB"]
    assert check.data["starttls_masked"] == "XXXXXXXA"
    assert "strips STARTTLS" in check.detail and "XXXB = AUTH/SIZE" in check.detail


def test_starttls_masked_is_a_stripped_starttls() -> None:
    check = analyse.starttls_check(analyse.TlsResult(False, False), False, "XXXXXXXA")
    assert check.verdict is Verdict.PROBLEM and check.filter_sign
    assert "strips STARTTLS" in check.detail and "XXXXXXXA" in check.detail
    _, summary = analyse.summarise([check])
    assert "STARTTLS is stripped" in summary


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


def _variant(outcome: Outcome, smuggled: Delivered = Delivered.UNCHECKED) -> VariantResult:
    return VariantResult("LF.LF", "\\n.\\n", outcome, smuggled, "detail")


def test_smuggling_and_summary() -> None:
    results = [
        _variant(Outcome.ACCEPTED),
        VariantResult("CR.CR", "\\r.\\r", Outcome.REJECTED, Delivered.UNCHECKED, "content"),
    ]
    check = analyse.smuggling_check(results)
    assert check.verdict is Verdict.PROBLEM and "LF.LF" in check.detail
    verdict, summary = analyse.summarise([check])
    assert verdict is Verdict.PROBLEM and "smuggling" in summary
    assert analyse.summarise([])[0] is Verdict.OK


def test_delivered_smuggling_is_named() -> None:
    check = analyse.smuggling_check([_variant(Outcome.ACCEPTED, Delivered.DELIVERED)])
    assert check.verdict is Verdict.PROBLEM and "DELIVERED after LF.LF" in check.detail


def test_clean_variants_with_a_mailbox_say_so() -> None:
    check = analyse.smuggling_check([_variant(Outcome.REJECTED, Delivered.NOT_DELIVERED)])
    assert check.verdict is Verdict.OK and "mailbox confirms" in check.detail


OK250 = b"250 2.0.0 Ok: queued as A1\r\n"


def attempt(*raw: bytes, early: bytes | None = None, error: str | None = None) -> analyse.Attempt:
    return analyse.Attempt(
        "c@x",
        "s@x",
        early=reply(early) if early else None,
        replies=tuple(reply(r) for r in raw),
        error=error,
    )


@pytest.mark.parametrize(
    ("a", "outcome", "words"),
    [
        (attempt(OK250), Outcome.REJECTED, "kept as content"),
        (attempt(b"550 5.5.2 Error: bare <LF> received\r\n"), Outcome.REJECTED, "refused"),
        (
            attempt(b"250 Ok\r\n", b"250 Ok\r\n", b"354 go\r\n", OK250, early=OK250),
            Outcome.ACCEPTED,
            "right after the bogus",
        ),
        # no early answer, but five late ones: the bogus sequence ended the data
        (
            attempt(OK250, b"250 Ok\r\n", b"250 Ok\r\n", b"354 go\r\n", OK250),
            Outcome.ACCEPTED,
            "5 replies",
        ),
        # an early refusal, then the rest ran as commands: still an end of data
        (
            attempt(b"250 Ok\r\n", early=b"550 5.5.2 bare LF\r\n"),
            Outcome.ACCEPTED,
            "2 replies",
        ),
        (
            attempt(early=b"521 5.5.2 bare LF\r\n", error="the peer closed the connection"),
            Outcome.REJECTED,
            "refused at the bogus sequence",
        ),
        (attempt(error="no reply within 5 s"), Outcome.REJECTED, "no reply at all"),
    ],
)
def test_attempt_outcome(a: analyse.Attempt, outcome: Outcome, words: str) -> None:
    got, detail = analyse.attempt_outcome(a)
    assert got is outcome and words in detail


def _carrier(whole: bool) -> bytes:
    tail = messages.CARRIER_TAIL + b"\n..\nMAIL FROM:<>\nMessage-ID: <s@x>\n" if whole else b""
    return b"Message-ID: <c@x>\n\nbody " + (tail or messages.CARRIER_TAIL)


def test_mailbox_overrides_clean_replies() -> None:
    """One 250, as a front that swallows the early reply shows it, yet both messages
    arrived: the variant is accepted and the smuggled message delivered."""
    box = {"c@x": _carrier(whole=False), "s@x": b"Message-ID: <s@x>\n\nsmuggled"}
    v = analyse.judge_variant("LF.LF", "\\n.\\n", attempt(OK250), box)
    assert (v.outcome, v.smuggled) == (Outcome.ACCEPTED, Delivered.DELIVERED)
    assert "replies looked clean" in v.detail


def test_cut_carrier_is_an_end_of_data_even_without_the_smuggled_message() -> None:
    v = analyse.judge_variant("LF.LF", "\\n.\\n", attempt(OK250), {"c@x": _carrier(False)})
    assert (v.outcome, v.smuggled) == (Outcome.ACCEPTED, Delivered.NOT_DELIVERED)
    assert "cut at the bogus sequence" in v.detail


def test_whole_carrier_shows_what_the_sequence_became() -> None:
    v = analyse.judge_variant("LF.LF", "\\n.\\n", attempt(OK250), {"c@x": _carrier(True)})
    assert (v.outcome, v.smuggled) == (Outcome.REJECTED, Delivered.NOT_DELIVERED)
    assert "arrived as '\\n..\\n'" in v.detail


def test_missing_acknowledged_carrier_leaves_the_variant_unchecked() -> None:
    v = analyse.judge_variant("LF.LF", "\\n.\\n", attempt(OK250), {}, complete=False)
    assert v.smuggled is Delivered.UNCHECKED
    refused = attempt(b"550 5.6.0 Message refused\r\n")
    v = analyse.judge_variant("LF.LF", "\\n.\\n", refused, {}, complete=False)
    assert v.smuggled is Delivered.NOT_DELIVERED


def test_no_mailbox_is_unchecked() -> None:
    v = analyse.judge_variant("LF.LF", "\\n.\\n", attempt(OK250), None)
    assert v.smuggled is Delivered.UNCHECKED and v.outcome is Outcome.REJECTED


def test_pipelining_text_is_one_sentence() -> None:
    """Issue 16: the text ran "PIPELINING" and "EHLO is refused" together."""
    refused = analyse.pipelining_check(False, True, None, None).detail
    assert not refused.startswith("PIPELINING EHLO")
    assert refused == "PIPELINING cannot be seen: EHLO is refused, so no extension is visible"
    plain = analyse.pipelining_check(False, False, None, None).detail
    assert plain.startswith("PIPELINING not offered: ")


def test_auth_mechanisms() -> None:
    ehlo = reply(b"250-mx\r\n250-AUTH PLAIN login\r\n250 AUTH=LOGIN\r\n")
    assert analyse.auth_mechanisms(ehlo) == ["PLAIN", "LOGIN"]
    assert analyse.auth_mechanisms(reply(b"250-mx\r\n250 AUTH=LOGIN\r\n")) == ["LOGIN"]
    assert analyse.auth_mechanisms(reply(b"250 mx\r\n")) == []


def test_pipelined_data_verdicts() -> None:
    ok, go = reply(b"250 Ok\r\n"), reply(b"354 go\r\n")
    assert analyse.pipelined_data_check(ok, [ok, ok, go, ok], None).verdict is Verdict.INFO
    sync = reply(b"554 5.5.0 Error: SMTP protocol synchronization\r\n")
    assert analyse.pipelined_data_check(ok, [ok, ok, sync], None).verdict is Verdict.OK
    skipped = analyse.pipelined_data_check(reply(b"550 no\r\n"), [], None)
    assert skipped.verdict is Verdict.SKIPPED
