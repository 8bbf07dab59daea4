"""Differential test of the envelope reader (core/address.py) against a real Postfix.

For every generated MAIL FROM / RCPT TO line, Postfix is asked what it makes of it:
its reply, and, when it accepts, the address it recorded. A ``check_*_access
static:{INFO seen-…}`` restriction makes smtpd log ``from=<…> to=<…>`` for every
accepted MAIL and RCPT, and ``info_log_address_format = internal`` makes it log the
address in its internal form (quotes and backslashes removed, source route dropped),
the form the gateway's reader returns, so the two are compared as they are: no
normalisation. (RCPT ``<postmaster>`` passes smtpd's restrictions unlogged, RFC 5321
§4.5.1; the test expects that.) Each case has its own marker address, so a log line
is matched to its case whatever else is logged.

The rule: the gateway refuses the line (its reader cannot read it, or the
special-characters check), or Postfix refuses it, or the mailbox the checks saw is
the address Postfix recorded. Then the RCPT lines go through ``smtpguard serve``
with ``recipient_domains`` as an allow list in front of the same Postfix, and no
recipient outside the list may reach it.

Lines are drawn at random on every run (hypothesis, no shrinking: a disagreement is
printed with its line), together with the fixed forms of tests/core/test_envelope.py.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from smtpguard.core.address import parse_path
from smtpguard.core.checks import special_characters
from smtpguard.core.grammar import parse_command
from tests.core.test_envelope import FORMS
from tests.peers import LOOPBACK, GatewayProcess
from tests.postfix import PrivatePostfix

pytestmark = pytest.mark.e2e

# Distinct lines per run (the generator repeats its simplest lines, so it draws up
# to four times as many); SMTPGUARD_ENVELOPE_CASES=5000 for a longer hunt.
CASES_PER_RUN = int(os.environ.get("SMTPGUARD_ENVELOPE_CASES", "250"))
ALLOWED = "example.net"

# What smtpd logs for every MAIL and RCPT it accepts, in the address's internal form.
POSTFIX_SETTINGS = {
    "smtpd_delay_reject": "no",
    "smtpd_sender_restrictions": "check_sender_access static:{INFO seen-mail}",
    "smtpd_recipient_restrictions": (
        "check_recipient_access static:{INFO seen-rcpt}, permit_mynetworks, reject"
    ),
    "smtpd_relay_restrictions": "",
    "info_log_address_format": "internal",
    # Hundreds of refused commands in one session: no error sleep, no disconnect.
    "smtpd_error_sleep_time": "0",
    "smtpd_soft_error_limit": "100000",
    "smtpd_hard_error_limit": "100000",
    "smtpd_junk_command_limit": "100000",
    # Each accepted RCPT opens a queue file that RSET throws away: no delivery ever
    # refills the flow-control tokens, so smtpd would pause 1 s per transaction.
    "in_flow_delay": "0",
}

# -- the generator -------------------------------------------------------------------

# Each part of a line: the usual forms, and odd ones drawn about one time in eight
# (a line has ten parts: about a quarter of the lines are all usual).
_LOCAL = (
    ["a", "boss", "Victim", "x.y", "a+tag", "o'neil", "j\xf6rg", "~u", "a=b"],
    ["a%evil.test", "evil.test!v", "a..b", ".a", "a.", "a\\@b", "a b", "a@evil.test"],
)
_QUOTED = (
    ['"a b"', '"a\\"b"', '"a\\\\b"', '"x.y"', '"a>b"', '"a,b"', '"(x)"', '"a@b"'],
    ['""', '"a', '"\\"', '"a"b', '"a".b', '"\\a"', '"@evil.test:v"', '"a\tb"', '"a<b"'],
)
_DOMAINS = (
    ["example.net", "EXAMPLE.Net", "evil.test", "sub.example.net", "[192.0.2.7]"],
    [
        "example.net.",
        "example.net.evil.test",
        "[127.0.0.1]",
        "[IPv6:2001:db8::7]",
        "b\xfccher.example",
        "evil..test",
        "-x.test",
        "evil_test.example",
        "[a]b",
        "",
    ],
)
_ROUTES = (
    [""],
    [
        "@relay.example:",
        "@a.example,@b.example:",
        "@evil.test:",
        "@[192.0.2.1]:",
        "@relay.example",
        "@:",
        "@relay.example:@b.example:",
        "@ relay.example:",
    ],
)
_COMMENTS = ([""], ["(c)", " (comment) ", "(a@evil.test)", "(", ")"])
_PHRASES = ([""], ["Name ", "Name", '"N N" ', "x<"])
_BRACKETS = (
    [("<", ">"), ("", "")],
    [("<", ""), ("", ">"), ("<<", ">>"), ("< ", " >"), ("<", "> x")],
)
_SPACES = (["", " "], ["  ", "\t", "\x0b", "\x0c", " \x0b"])
_PARAMS = (
    ["", " SIZE=100", " BODY=8BITMIME", " NOTIFY=NEVER"],
    [" X=1", "  SIZE=10  ", " <a@evil.test>", " ORCPT=rfc822;a@evil.test", ' X="a b"'],
)
_SECOND = ([""], [",c@evil.test", " c@evil.test", ", <c@evil.test>", "<c@evil.test>"])
_KEYWORDS = {
    "MAIL": (["FROM:", "from:"], ["From:", "FROM :"]),
    "RCPT": (["TO:", "to:"], ["To:", "TO :"]),
}
_NOISE = '<>"\\():,;@ \t%![]\xa0\x85'


def _odd(draw: st.DrawFn) -> bool:
    return draw(st.sampled_from(range(8))) == 7


def _pick(draw: st.DrawFn, forms: tuple[list[str], list[str]]) -> str:
    usual, odd = forms
    return draw(st.sampled_from(odd if _odd(draw) else usual))


@st.composite
def envelope_lines(draw: st.DrawFn) -> tuple[str, str]:
    verb = draw(st.sampled_from(["MAIL", "RCPT", "RCPT"]))
    if draw(st.sampled_from(range(4))) == 3:
        local = _pick(draw, _QUOTED)
    else:
        local = ".".join(_pick(draw, _LOCAL) for _ in range(draw(st.integers(1, 2))))
    domain = _pick(draw, _DOMAINS)
    mailbox = _pick(draw, _ROUTES) + local + ("@" + domain if domain else "")
    if draw(st.sampled_from(range(16))) == 15:
        mailbox = ""  # the null path, or nothing at all
    open_, close = draw(st.sampled_from(_BRACKETS[1] if _odd(draw) else _BRACKETS[0]))
    address = (
        _pick(draw, _PHRASES)
        + open_
        + _pick(draw, _COMMENTS)
        + mailbox
        + _pick(draw, _COMMENTS)
        + _pick(draw, _SECOND)
        + close
    )
    line = (
        verb
        + " "
        + _pick(draw, _KEYWORDS[verb])
        + _pick(draw, _SPACES)
        + address
        + _pick(draw, _PARAMS)
    )
    for _ in range(draw(st.integers(1, 2)) if _odd(draw) else 0):
        at = draw(st.integers(5, len(line)))
        line = line[:at] + draw(st.sampled_from(_NOISE)) + line[at:]
    return verb, line


def fixed_lines() -> list[tuple[str, str]]:
    verbs = {"FROM": "MAIL", "TO": "RCPT"}
    return [(verbs[kw], f"{verbs[kw]} {args}") for args, kw, _ in FORMS if args[:2] in ("TO", "FR")]


# -- the two readers -----------------------------------------------------------------


def gateway_reading(verb: str, line: str) -> str | None:
    """The mailbox the gateway's checks see; None when the gateway refuses the line
    before any check on the address (its reader or the special-characters check)."""
    cmd = parse_command(line.encode("utf-8", "surrogateescape") + b"\r\n")
    assert cmd is not None and cmd.verb == verb
    if special_characters(cmd.args) is not None:
        return None
    path = parse_path(cmd.args, "FROM" if verb == "MAIL" else "TO")
    return None if path is None else path.mailbox


class Client:
    """A line-at-a-time SMTP client: each command waits for its whole reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=20)
        self.buf = bytearray()
        assert self.reply().startswith("220")

    def reply(self) -> str:
        while True:
            end = self.buf.find(b"\r\n")
            while end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                if line[3:4] != b"-":
                    return line.decode("utf-8", "replace")
                end = self.buf.find(b"\r\n")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the peer")
            self.buf += chunk

    def send(self, line: str) -> str:
        self.sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.send("QUIT")
        finally:
            self.sock.close()


@dataclass
class Outcome:
    verb: str
    line: str
    reply: str
    recorded: str | None  # the address Postfix logged; None: nothing logged


def ask_postfix(
    pf: PrivatePostfix, port: int, cases: list[tuple[str, str]], tag: str
) -> list[Outcome]:
    """Send every case in one session, each in its own transaction with its own
    marker, and read back what Postfix recorded for it."""
    c = Client(port)
    assert c.send("EHLO differential.example").startswith("250")
    replies = []
    for n, (verb, line) in enumerate(cases):
        c.send("RSET")
        if verb == "MAIL":
            reply = c.send(line)
            if reply.startswith("2"):
                assert c.send(f"RCPT TO:<{tag}-{n}@{ALLOWED}>").startswith("2")
        else:
            assert c.send(f"MAIL FROM:<{tag}-{n}@example.org>").startswith("2")
            reply = c.send(line)
        replies.append(reply)
    # A last marker: one smtpd logs in order, so once it is in the log, all is.
    c.send("RSET")
    c.send(f"MAIL FROM:<{tag}-end@example.org>")
    assert c.send(f"RCPT TO:<{tag}-end@{ALLOWED}>").startswith("2")
    c.close()
    seen = re.compile(r"seen-rcpt; from=<(.*?)> to=<(.*)> proto=ESMTP helo=<")

    def lines(text: str) -> list[re.Match[str]]:
        # Split on LF only: str.splitlines() also splits at U+0085 inside an address.
        return [m for m in map(seen.search, text.split("\n")) if m and tag in m[0]]

    end = f"from=<{tag}-end@example.org> to=<{tag}-end@{ALLOWED}>"
    found = lines(pf.wait_log(lambda t: end in t, timeout=20))
    assert found and end in found[-1][0], "the last marker was not logged"
    by_sender = {m[1]: m[2] for m in found}
    by_recipient = {m[2]: m[1] for m in found}
    out = []
    for n, ((verb, line), reply) in enumerate(zip(cases, replies, strict=True)):
        if verb == "MAIL":
            recorded = by_recipient.get(f"{tag}-{n}@{ALLOWED}")
        else:
            recorded = by_sender.get(f"{tag}-{n}@example.org")
        out.append(Outcome(verb, line, reply, recorded))
    return out


# -- the tests -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def postfix() -> Iterator[PrivatePostfix]:
    with PrivatePostfix("smtpguard-envelope", **POSTFIX_SETTINGS) as pf:
        yield pf


def check_agreement(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"cases": 0, "gateway refuses": 0, "postfix refuses": 0, "same address": 0}
    counts["gateway refuses what postfix takes"] = 0
    disagreements = []
    for o in outcomes:
        counts["cases"] += 1
        seen = gateway_reading(o.verb, o.line)
        accepted = o.reply.startswith("2")
        if accepted and o.recorded is None:
            # Only RCPT <postmaster> is accepted unlogged (smtpd_check_rcpt).
            assert o.verb == "RCPT" and (seen or "").lower() == "postmaster", o
        if seen is None:
            counts["gateway refuses"] += 1
            counts["gateway refuses what postfix takes"] += accepted
        elif not accepted:
            counts["postfix refuses"] += 1
        elif o.recorded is None or seen == o.recorded:
            counts["same address"] += 1
        else:
            disagreements.append(f"{o.line!r}: gateway saw {seen!r}, Postfix took {o.recorded!r}")
    print(f"\nenvelope differential: {counts}")
    assert not disagreements, "\n".join(disagreements)
    return counts


def test_fixed_forms_read_as_postfix_reads_them(postfix: PrivatePostfix) -> None:
    check_agreement(ask_postfix(postfix, postfix.port, fixed_lines(), "fixed"))


def generated_lines(n: int) -> list[tuple[str, str]]:
    """``n`` lines from the generator, fresh on every run (no example database, no
    shrinking: a disagreement is reported with its line)."""
    out: list[tuple[str, str]] = []

    @settings(
        max_examples=4 * n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(envelope_lines())
    def collect(case: tuple[str, str]) -> None:
        out.append(case)

    collect()
    return list(dict.fromkeys(out))[:n]


@pytest.fixture(scope="module")
def cases() -> list[tuple[str, str]]:
    return generated_lines(CASES_PER_RUN)


def test_generated_lines_read_as_postfix_reads_them(
    postfix: PrivatePostfix, cases: list[tuple[str, str]]
) -> None:
    counts = check_agreement(ask_postfix(postfix, postfix.port, cases, "gen"))
    assert counts["same address"] > len(cases) // 10  # the generator reaches Postfix
    assert counts["gateway refuses"] > len(cases) // 10  # and goes beyond what we read


def test_no_recipient_outside_the_list_reaches_postfix(
    postfix: PrivatePostfix, tmp_path: Path, cases: list[tuple[str, str]]
) -> None:
    """The RCPT lines through ``smtpguard serve`` with ``recipient_domains`` an allow
    list: every recipient Postfix records has the allowed domain (or is Postmaster)."""
    rcpts = [c for c in cases + fixed_lines() if c[0] == "RCPT"]
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        'mode = "esmtp"\nhostname = "gw.example.test"\n'
        f"[checks.recipient_domains]\npatterns = ['^{re.escape(ALLOWED)}$']\nallow = true\n"
    )
    gw = GatewayProcess("--config", str(cfg), "--upstream", postfix.address, workdir=tmp_path)
    try:
        outcomes = ask_postfix(postfix, gw.port, rcpts, "via-gw")
    finally:
        gw.stop()
    relayed = [o for o in outcomes if o.reply.startswith("2")]
    for o in relayed:
        to = o.recorded
        if to is None:
            assert (gateway_reading("RCPT", o.line) or "").lower() == "postmaster", o
            continue
        local, _, domain = to.rpartition("@")
        assert domain.lower() == ALLOWED and not set(local) & set("@%!"), o
    print(
        f"\nthrough the gateway: {len(rcpts)} RCPT lines, {len(relayed)} relayed, all to {ALLOWED}"
    )
    assert relayed  # the allowed forms still pass


ROUTED = [
    "victim%evil.test@ok.example",
    '"victim@evil.test"@ok.example',
    "evil.test!victim@ok.example",
    "evil.test!victim",
]


def test_postfix_routes_on_a_domain_inside_the_local_part(tmp_path: Path) -> None:
    """Why a routed local part is refused while ``recipient_domains`` is on: with the
    listed domain local to Postfix (mydestination), Postfix delivers all of these to
    victim@evil.test (allow_percent_hack, resolve_dequoted_address, swap_bangpath are
    on by default); through the gateway, each gets 550."""
    with PrivatePostfix(
        "smtpguard-routed",
        mydestination="ok.example",
        myorigin="ok.example",
        alias_maps="",
        local_recipient_maps="",
    ) as pf:
        for rcpt in ROUTED:
            c = Client(pf.port)
            assert c.send("HELO c.example").startswith("250")
            assert c.send("MAIL FROM:<a@example.org>").startswith("250")
            assert c.send(f"RCPT TO:<{rcpt}>").startswith("250")
            assert c.send("DATA").startswith("354")
            assert c.send("Subject: routed\r\n\r\nhi\r\n.").startswith("250")
            c.close()
        log = pf.wait_log(lambda t: t.count("to=<victim@evil.test>") >= len(ROUTED))
        delivered = [ln for ln in log.splitlines() if "to=<victim@evil.test>" in ln]
        assert len(delivered) == len(ROUTED), log[-3000:]
        cfg = tmp_path / "gw.toml"
        cfg.write_text(
            "mode = \"esmtp\"\n[checks.recipient_domains]\npatterns = ['^ok\\.example$']\n"
        )
        gw = GatewayProcess("--config", str(cfg), "--upstream", pf.address, workdir=tmp_path)
        try:
            c = Client(gw.port)
            assert c.send("HELO c.example").startswith("250")
            assert c.send("MAIL FROM:<a@example.org>").startswith("250")
            for rcpt in ROUTED:
                assert c.send(f"RCPT TO:<{rcpt}>").startswith("550 5.7.1"), rcpt
            assert c.send("RCPT TO:<victim@ok.example>").startswith("250")
            c.close()
        finally:
            gw.stop()
