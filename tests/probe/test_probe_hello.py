"""EHLO or HELO: the probe's greeting rules (probe/hello.py), alone and end to end.

Pure rules pinned on literal replies and checked with hypothesis against Postfix's
own decision; then fake servers that answer like a PIX 6.x (EHLO rewritten to NOOP),
a PIX 7.x (rewritten to XXXX), a front that answers EHLO itself, and an ASA masking
STARTTLS: every probe test must run through each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.core.grammar import Reply, make_reply
from smtpguard.probe import hello
from smtpguard.probe.hello import Cause
from smtpguard.probe.messages import SMUGGLING_VARIANTS
from tests.probe.fakes import CLEAN_EHLO, RFC821, SEED_BANNER, Behaviour, FakeSmtpServer
from tests.probe.harness import FAST, run_probe_cli

pytestmark = pytest.mark.standalone

CLEAR = make_reply(220, "mx.example.org ESMTP Postfix")
MASKED = make_reply(220, "*" * 40)
EHLO_OK = make_reply(250, "mx.example.org", "PIPELINING", "SIZE 10240000", "STARTTLS")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (make_reply(250, "OK"), False),  # aiosmtpd's NOOP reply
        (make_reply(250, "2.0.0 Ok"), False),  # Postfix's / smtp-sink's NOOP reply
        (make_reply(250, "2.0.0 OK"), False),  # Sendmail, Exchange
        (make_reply(250, ""), False),
        (make_reply(250, "localhost"), False),  # not fully qualified
        (make_reply(250, "1.2.3.4"), False),  # no all-digit top-level label
        (make_reply(250, "mx.example.org"), True),
        (make_reply(250, "mx.example.org Hello client [192.0.2.1]"), True),
        (make_reply(250, "[192.0.2.25]"), True),
        (make_reply(250, "mx", "PIPELINING"), True),  # extension lines
        (make_reply(500, "mx.example.org"), False),
        (make_reply(251, "mx.example.org"), False),
    ],
)
def test_is_ehlo_reply(reply: Reply, expected: bool) -> None:
    assert hello.is_ehlo_reply(reply) is expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (make_reply(503, "5.5.1 Error: send HELO/EHLO first"), True),  # Postfix
        (make_reply(503, "Error: send HELO first"), True),  # aiosmtpd
        (make_reply(503, "5.0.0 Polite people say HELO first"), True),  # Sendmail
        (make_reply(503, "5.5.2 Send hello first"), True),  # Exchange
        (make_reply(503, "5.5.1 Bad sequence of commands"), True),
        (make_reply(530, "5.7.0 Authentication required"), False),
        (make_reply(503, "5.7.0 Error: authentication required"), False),
        (make_reply(553, "5.1.8 Sender address rejected"), False),
        (make_reply(250, "2.1.0 Ok"), False),
    ],
)
def test_asks_for_hello(reply: Reply, expected: bool) -> None:
    assert hello.asks_for_hello(reply) is expected


@pytest.mark.parametrize(
    ("banner", "ehlo", "need_esmtp", "verb", "cause"),
    [
        (CLEAR, EHLO_OK, False, "EHLO", Cause.EHLO),
        (MASKED, EHLO_OK, False, "HELO", Cause.MASKED_BANNER),  # Postfix disable_esmtp
        (MASKED, EHLO_OK, True, "EHLO", Cause.EHLO),  # --tls/--auth-user need EHLO
        (MASKED, make_reply(250, "OK"), False, "HELO", Cause.NOT_EHLO_REPLY),  # PIX 6.x
        (CLEAR, make_reply(250, "2.0.0 Ok"), False, "HELO", Cause.NOT_EHLO_REPLY),
        (MASKED, make_reply(500, "5.5.1 Unrecognized command"), False, "HELO", Cause.EHLO_REFUSED),
        (
            CLEAR,
            make_reply(500, 'Error: command "XXXX" not recognized'),
            True,
            "HELO",
            Cause.EHLO_REFUSED,
        ),
        (CLEAR, make_reply(421, "4.3.2 shutting down"), False, "HELO", Cause.EHLO_REFUSED),
    ],
)
def test_choose(banner: Reply, ehlo: Reply, need_esmtp: bool, verb: str, cause: Cause) -> None:
    choice = hello.choose(banner, ehlo, need_esmtp)
    assert (choice.verb, choice.cause) == (verb, cause)
    assert choice.detail and "\n" not in choice.detail and f"used {verb}" in choice.detail


def test_noop_reply_is_named_in_the_reason() -> None:
    choice = hello.choose(MASKED, make_reply(250, "OK"))
    assert choice.detail.startswith("EHLO answered like a NOOP (250 OK")
    assert "PIX 6.x" in choice.detail


def test_after_mail() -> None:
    ehlo = hello.choose(CLEAR, EHLO_OK)
    switched = hello.after_mail(ehlo, make_reply(503, "Error: send HELO first"))
    assert switched is not None and switched.verb == "HELO"
    assert (
        switched.cause is Cause.MAIL_ASKS_HELO and "503 Error: send HELO first" in switched.detail
    )
    assert hello.after_mail(ehlo, make_reply(250, "2.1.0 Ok")) is None
    # Already HELO: a 503 then is the server's own business, not a greeting problem.
    helo = hello.choose(MASKED, EHLO_OK)
    assert hello.after_mail(helo, make_reply(503, "Error: send HELO first")) is None


@pytest.mark.parametrize(
    ("keywords", "stripped", "candidates"),
    [
        # Behind a Cisco filter, 2006: STARTTLS and HELP masked, A then B.
        (["PIPELINING", "XXXXXXXA", "XXXB"], "XXXXXXXA", {"XXXXXXXA": "STARTTLS"}),
        # Sendmail behind one: DELIVERBY (9) and HELP masked, STARTTLS never offered.
        (["AUTH", "XXXXXXXXA", "XXXB"], None, {"XXXXXXXXA": "DELIVERBY"}),
        # STARTTLS still offered in clear: the 8-letter mask is something else.
        (["STARTTLS", "XXXXXXXA"], None, {"XXXXXXXA": "8BITMIME"}),
        (["PIPELINING", "XFORWARD", "XCLIENT"], None, {}),  # real X-keywords
        (["XXXXXXXX"], "XXXXXXXX", {"XXXXXXXX": "STARTTLS"}),  # X's only
    ],
)
def test_masked_keywords(
    keywords: list[str], stripped: str | None, candidates: dict[str, str]
) -> None:
    assert hello.stripped_starttls(keywords) == stripped
    found = {m.token: m.candidates for m in hello.masked_keywords(keywords)}
    assert candidates.keys() <= found.keys() and (bool(found) or not candidates)
    for token, first in candidates.items():
        assert first in found[token] and all(len(k) == len(token) for k in found[token])


_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_FQDN = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(_LABEL, min_size=1, max_size=3),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    code = draw(st.sampled_from([220, 250, 251, 421, 450, 500, 501, 502, 503, 530, 550]))
    return make_reply(code, *draw(st.lists(_TEXT, min_size=1, max_size=4)))


@given(replies(), replies(), st.booleans())
def test_the_probe_falls_back_whenever_postfix_does(
    banner: Reply, ehlo: Reply, need_esmtp: bool
) -> None:
    """Never crashes; where Postfix (defaults) would send HELO, so does the probe; the
    probe keeps EHLO only where Postfix would too, and only on an EHLO reply."""
    choice = hello.choose(banner, ehlo, need_esmtp)
    hello.asks_for_hello(ehlo)
    hello.masked_keywords([line.split(" ")[0] for line in ehlo.lines])
    postfix_ehlo = hello.postfix_sends_ehlo(banner) and hello.postfix_keeps_ehlo(ehlo)
    if not postfix_ehlo and not need_esmtp:
        assert choice.verb == "HELO"
    if not hello.postfix_keeps_ehlo(ehlo):
        assert choice.verb == "HELO"
    if choice.verb == "EHLO":
        assert hello.postfix_keeps_ehlo(ehlo) and hello.is_ehlo_reply(ehlo)


@given(_FQDN, st.lists(st.sampled_from(["PIPELINING", "SIZE 1000", "8BITMIME"]), max_size=3))
def test_a_real_ehlo_reply_keeps_ehlo(domain: str, keywords: list[str]) -> None:
    choice = hello.choose(CLEAR, make_reply(250, f"{domain} Hello", *keywords))
    assert choice.verb == "EHLO"


@given(st.sampled_from(["OK", "Ok", "2.0.0 Ok", "2.0.0 OK", "2.0.0 Ok: ok", ""]))
def test_a_noop_reply_is_never_an_ehlo_reply(text: str) -> None:
    assert not hello.is_ehlo_reply(make_reply(250, text))


# --- the probe end to end against fake paths ------------------------------------------

VARIANTS = tuple(SMUGGLING_VARIANTS)
# Each fake path the probe must get through with every test; the server behind it
# refuses MAIL before HELO/EHLO, as aiosmtpd and Postfix do.
PIX6 = Behaviour(banner=SEED_BANNER, allowed=RFC821, disallowed="noop", need_hello=True)
PIX7 = Behaviour(banner=SEED_BANNER, allowed=RFC821, disallowed="xxxx", need_hello=True)
# A front that answers EHLO itself with a plausible reply and passes nothing on.
FRONT = Behaviour(ehlo=b"250 filter.example.net\r\n", need_hello=True, ehlo_greets=False)
ASA = Behaviour(
    ehlo=b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-XXXXXXXA\r\n"
    b"250-8BITMIME\r\n250 XXXB\r\n",
    need_hello=True,
)


def _run(behaviour: Behaviour, *extra: str) -> tuple[dict[str, Any], list[str]]:
    """The probe (its CLI, --json) against a fake path; the report and the verbs the
    server behind saw."""
    fake = FakeSmtpServer(behaviour)
    with fake as (host, port):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            run_probe_cli(["probe", f"{host}:{port}", "--json", "--timeout", "5", *FAST, *extra])
    return json.loads(out.getvalue()), fake.record.verbs


def _every_test_ran(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checks = {c["id"]: c for c in report["checks"]}
    skipped = [c for c in checks.values() if c["verdict"] == "skipped"]
    assert not skipped, skipped
    assert report["split_terminator"] == "passed"
    assert report["smuggling"] == dict.fromkeys(VARIANTS, "rejected")
    assert checks["control-message"]["verdict"] == "ok"
    assert checks["pipelined-data"]["verdict"] in ("ok", "info")
    return checks


@pytest.mark.parametrize(
    ("behaviour", "cause", "text"),
    [
        pytest.param(PIX6, "not-ehlo-reply", "EHLO answered like a NOOP (250 OK", id="pix6"),
        pytest.param(PIX7, "ehlo-refused", "EHLO refused (500", id="pix7"),
        pytest.param(FRONT, "mail-asks-helo", "MAIL was answered 503", id="front"),
    ],
)
def test_every_test_runs_through(behaviour: Behaviour, cause: str, text: str) -> None:
    report, verbs = _run(behaviour)
    checks = _every_test_ran(report)
    assert report["hello"]["verb"] == "HELO" and report["hello"]["cause"] == cause
    assert text in report["hello"]["detail"] == checks["hello"]["detail"]
    assert report["filter_detected"] is True
    # The message sessions greet with HELO alone: EHLO went out in the dialogue only
    # (whose MAIL, for the front, found the server still waiting for a greeting).
    assert verbs.count("EHLO") == 1


def test_a_masked_starttls_is_a_stripped_starttls() -> None:
    report, verbs = _run(ASA)
    checks = _every_test_ran(report)
    assert report["hello"]["verb"] == "EHLO"
    assert checks["hello"]["verdict"] == "ok"
    assert checks["starttls"]["verdict"] == "problem"
    assert "strips STARTTLS" in checks["starttls"]["detail"]
    assert "XXXXXXXA" in checks["starttls"]["detail"]
    assert checks["ehlo"]["data"]["starttls_masked"] == "XXXXXXXA"
    assert "STARTTLS is stripped" in report["summary"]
    assert "HELO" not in verbs


def test_no_send_still_finds_the_fallback() -> None:
    report, verbs = _run(FRONT, "--no-send")
    assert report["hello"]["cause"] == "mail-asks-helo"
    assert "DATA" not in verbs and report["split_terminator"] == "untested"


def test_clean_server_keeps_ehlo() -> None:
    report, verbs = _run(Behaviour(ehlo=CLEAN_EHLO, need_hello=True))
    _every_test_ran(report)
    assert report["hello"]["cause"] == "ehlo" and "HELO" not in verbs


def test_a_message_session_switches_to_helo_when_mail_asks() -> None:
    """The dialogue's MAIL went through (or was never sent), yet a message session's
    MAIL asks for HELO: that session is opened again with HELO, and so is every
    later one."""
    from smtpguard.probe.model import ProbeOptions
    from smtpguard.probe.runner import Plan, _end_whole, deliver

    with FakeSmtpServer(FRONT) as (host, port):
        opts = ProbeOptions(host, port, timeout=5)
        plan = Plan(hello.choose(CLEAR, make_reply(250, "filter.example.net")))
        first = asyncio.run(deliver(opts, "first", _end_whole, plan))
        second = asyncio.run(deliver(opts, "second", _end_whole, plan))
    assert first.reply is not None and first.reply.code == 250
    assert second.reply is not None and second.reply.code == 250
    assert plan.choice is not None and plan.choice.cause is Cause.MAIL_ASKS_HELO
