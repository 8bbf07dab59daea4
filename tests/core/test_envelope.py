"""MAIL/RCPT arguments read as Postfix reads them (core/address.py), and every
envelope check running on that reading (issue 23, item 1).

The regression playbooks below each got 250 through the gateway before this reader:
a path without angle brackets skipped every check. Every conversation here is re-cut
at random segmentations by tests/core/conftest.py.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtpguard.core import address
from smtpguard.core.address import EnvelopePath, parse_path
from smtpguard.core.policy import Check, Checks, Mode, PatternCheck, Policy, Verdict
from tests.core.harness import converse

EHLO = b"EHLO c\r\n"
MAIL = b"MAIL FROM:<a@example.org>\r\n"


def esmtp(**checks: object) -> Policy:
    return Policy.for_mode(Mode.ESMTP, hostname="gw", checks=Checks(**checks))  # type: ignore[arg-type]


RELAY_ONLY_TO_EXAMPLE_NET = esmtp(
    recipient_domains=PatternCheck(Verdict.REJECT, (r"example\.net",), allow=True)
)

# -- the reader -------------------------------------------------------------------

P = EnvelopePath
# (args, keyword, reading): each form and what Postfix 3.7 takes from it (checked
# against a real Postfix by tests/e2e/test_envelope_postfix.py).
FORMS = [
    ("FROM:<a@b.example> SIZE=1", "FROM", P("a@b.example", "b.example", "SIZE=1", False)),
    ("from:<a@b.example>", "FROM", P("a@b.example", "b.example", "", False)),
    ("FROM:<>", "FROM", P("", "", "", False)),
    ("FROM:<> BODY=8BITMIME", "FROM", P("", "", "BODY=8BITMIME", False)),
    ("TO: <x@y.example>", "TO", P("x@y.example", "y.example", "", False)),
    ("TO:\x0b\x0c <x@y.example>\t", "TO", P("x@y.example", "y.example", "", False)),
    ("FROM:boss@spam.example", "FROM", P("boss@spam.example", "spam.example", "", False)),
    (
        "TO:victim@evil.test NOTIFY=NEVER",
        "TO",
        P("victim@evil.test", "evil.test", "NOTIFY=NEVER", False),
    ),
    ("TO:<@relay.example:victim@evil.test>", "TO", P("victim@evil.test", "evil.test", "", False)),
    ("TO:<@a.example,@b.example:v@evil.test>", "TO", P("v@evil.test", "evil.test", "", False)),
    ("TO:@relay.example:victim@evil.test", "TO", P("victim@evil.test", "evil.test", "", False)),
    ('TO:<"a b"@q.example>', "TO", P("a b@q.example", "q.example", "", False)),
    ('TO:<"a\\"b"@q.example>', "TO", P('a"b@q.example', "q.example", "", False)),
    ('TO:"x y"@q.example X=1', "TO", P("x y@q.example", "q.example", "X=1", False)),
    ('TO:<"a>b"@q.example>', "TO", P("a>b@q.example", "q.example", "", False)),
    ('TO:<"v@evil.test"@ok.example>', "TO", P("v@evil.test@ok.example", "ok.example", "", True)),
    ("TO:<v%evil.test@ok.example>", "TO", P("v%evil.test@ok.example", "ok.example", "", True)),
    ("TO:<evil.test!v@ok.example>", "TO", P("evil.test!v@ok.example", "ok.example", "", True)),
    ("TO:evil.test!v", "TO", P("evil.test!v", "", "", True)),
    ("TO:<postmaster>", "TO", P("postmaster", "", "", False)),
    ("TO:<a@[192.0.2.1]>", "TO", P("a@[192.0.2.1]", "[192.0.2.1]", "", False)),
    ("TO:<a@[IPv6:2001:db8::1]>", "TO", P("a@[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]", "", False)),
    (
        "TO:<jos\xe9@b\xfccher.example>",
        "TO",
        P("jos\xe9@b\xfccher.example", "b\xfccher.example", "", False),
    ),
    ("TO:Name <a@b.example>", "TO", P("Name", "", "<a@b.example>", False)),  # Postfix: 555
    # What Postfix reads but this reader refuses: it cannot be sure of the reading.
    ("TO:Name<a@b.example>", "TO", None),
    ("TO:<a@b.example (comment)>", "TO", None),
    ("TO:<(c)a@b.example>", "TO", None),
    ("TO:<<a@b.example>>", "TO", None),
    ("TO:<a@b.example,c@d.example>", "TO", None),
    ("TO:< a@b.example>", "TO", None),
    ("TO:<a@b.example.>", "TO", None),
    ("TO:<a..b@b.example>", "TO", None),
    ("TO:<a@b@c.example>", "TO", None),
    ("TO:<a\\@b@c.example>", "TO", None),
    ('TO:<""@b.example>', "TO", None),
    ('TO:<"a"b@c.example>', "TO", None),
    ('TO:<"ab">', "TO", None),
    ("TO:<@relay.example>", "TO", None),
    ("TO:<@[::1]:a@b.example>", "TO", None),
    ("TO:<@r.example:@s.example:a@b.example>", "TO", None),
    ("TO:<a@b.example>x", "TO", None),
    ("TO:<a@b.example", "TO", None),
    ('TO:"a@b.example', "TO", None),
    ("TO:<>", "TO", P("", "", "", False)),  # read; check_rcpt refuses it (501)
    ("TO:", "TO", None),
    ("TO :<a@b.example>", "TO", None),
    ("FROM:<a@b.example>", "TO", None),
    ("\u017fROM:<a@b.example>", "FROM", None),  # long s: upper() is "S", not ASCII
    ("TO:\xa0<a@b.example>", "TO", None),  # U+00A0 is no space to the server
]


@pytest.mark.parametrize(("args", "keyword", "reading"), FORMS, ids=[f[0] for f in FORMS])
def test_forms(args: str, keyword: str, reading: EnvelopePath | None) -> None:
    assert parse_path(args, keyword) == reading


def _slow(args: str, keyword: str) -> EnvelopePath | None:
    """The reader without its fast path for ``<local@domain>``."""
    n = len(keyword)
    if len(args) <= n or args[n] != ":" or not args[:n].isascii() or args[:n].upper() != keyword:
        return None
    start = n + 1
    while start < len(args) and args[start] in " \t\x0b\x0c":
        start += 1
    if start == len(args):
        return None
    end = address._word_end(args, start)
    if end < 0:
        return None
    return address._read_word(args[start:end], args[end:].strip(" \t\x0b\x0c"))


_pieces = st.lists(
    st.one_of(
        st.sampled_from(["TO:", "FROM:", "<", ">", "@", '"', "\\", ":", ",", ".", "%", "!"]),
        st.sampled_from([" ", "\t", "\x0b", "\xa0", "\x85", "\x00", "(", ")", "[", "]"]),
        st.sampled_from(["a", "b.example", "SIZE=10", "\xe9", "\udcff", "IPv6:", "1"]),
        st.text(max_size=3),
    ),
    max_size=10,
).map("".join)


@given(_pieces, st.sampled_from(["FROM", "TO"]))
@example("TO:<a@b.example> X=1", "TO")
@example('TO:<"a"@b.example>', "TO")
@example("TO:<a@b.example>\xa0", "TO")
def test_fast_path_is_the_reader(args: str, keyword: str) -> None:
    """Never an exception, and the common form's shortcut reads as the full reader."""
    assert parse_path(args, keyword) == _slow(args, keyword)


@given(_pieces, st.sampled_from(["FROM", "TO"]))
def test_a_reading_is_consistent(args: str, keyword: str) -> None:
    path = parse_path(args, keyword)
    if path is None or not path.mailbox:
        return
    local, at, domain = path.mailbox.rpartition("@")
    assert path.domain == (domain if at else "")
    assert path.routed == any(c in (local if at else path.mailbox) for c in "@%!")
    assert path.params == path.params.strip(" \t\x0b\x0c")


# -- every check on that reading: regressions that passed before ---------------------


def _refused(script: bytes, policy: Policy, reply: bytes, event: str, verb: bytes) -> None:
    run = converse(EHLO + script + b"QUIT\r\n", policy=policy)
    assert reply in run.replies(), run.replies()
    assert event in run.event_ids()
    sent = bytes(run.server.received)
    assert script.split(b"\r\n")[-2] not in sent  # the refused command never went up
    assert verb in script


@pytest.mark.parametrize(
    "rcpt",
    [
        b"RCPT TO:victim@evil.test",
        b"RCPT TO: victim@evil.test",
        b"RCPT TO:victim@evil.test NOTIFY=NEVER",
        b"RCPT TO:@example.net:victim@evil.test",
        b"RCPT TO:<@example.net:victim@evil.test>",
        b'RCPT TO:"victim"@evil.test',
        b"RCPT TO:<victim%evil.test@example.net>",
        b"RCPT TO:<evil.test!victim@example.net>",
        b'RCPT TO:<"victim@evil.test"@example.net>',
        b"RCPT TO:victim%evil.test",
        b"RCPT TO:<victim>",  # the server appends $myorigin: no pattern sees it
    ],
)
def test_recipient_domains_see_every_form(rcpt: bytes) -> None:
    _refused(
        MAIL + rcpt + b"\r\n",
        RELAY_ONLY_TO_EXAMPLE_NET,
        b"550 5.7.1 Relay access denied",
        "SG-CHK-RECIPIENT-DOMAIN",
        b"RCPT",
    )


def test_allowed_forms_still_relay_unchanged() -> None:
    script = (
        EHLO
        + MAIL
        + b"RCPT TO:b@example.net\r\nRCPT TO: <@relay.example:c@example.net>\r\n"
        + b'RCPT TO:<"d e"@example.net>\r\nRCPT TO:<PostMaster>\r\nQUIT\r\n'
    )
    run = converse(script, policy=RELAY_ONLY_TO_EXAMPLE_NET)
    assert run.replies().count(b"250 2.1.5 Ok") == 4
    assert bytes(run.server.received) == script  # forwarded as sent, byte for byte


@pytest.mark.parametrize(
    "mail",
    [
        b"MAIL FROM:boss@spam.example",
        b"MAIL FROM: boss@spam.example",
        b'MAIL FROM:<"boss"@spam.example>',
        b"MAIL FROM:<@relay.example:boss@spam.example>",
    ],
)
def test_sender_pattern_sees_every_form(mail: bytes) -> None:
    policy = esmtp(sender_pattern=PatternCheck(Verdict.REJECT, (r"^boss@spam\.example$",)))
    _refused(
        mail + b"\r\n",
        policy,
        b"550 5.7.1 Sender address rejected",
        "SG-CHK-SENDER-PATTERN",
        b"MAIL",
    )


def test_sender_length_sees_an_unbracketed_sender() -> None:
    policy = esmtp(sender_length=Check(Verdict.REJECT, 10))
    _refused(
        b"MAIL FROM:abcdef@f.gh\r\n",
        policy,
        b"553 5.1.7 Sender address too long",
        "SG-CHK-SENDER-LENGTH",
        b"MAIL",
    )
    run = converse(EHLO + b"MAIL FROM:abcde@f.gh\r\nQUIT\r\n", policy=policy)
    assert b"250 2.1.0 Ok" in run.replies()


def test_size_after_an_unbracketed_sender() -> None:
    _refused(
        b"MAIL FROM:a@x.org SIZE=101\r\n",
        esmtp(message_size=Check(Verdict.REJECT, 100)),
        b"552 5.3.4 Message size exceeds fixed maximum message size",
        "SG-CHK-MESSAGE-SIZE",
        b"MAIL",
    )


@pytest.mark.parametrize(
    "script",
    [
        b"MAIL FROM:a@x.org BODY=BINARYMIME\r\n",
        MAIL + b"RCPT TO:b@example.net NOTIFY=NEVER\r\n",  # DSN is not offered
        MAIL + b"RCPT TO:Name <b@example.net>\r\n",
    ],
)
def test_parameters_after_an_unbracketed_path(script: bytes) -> None:
    run = converse(EHLO + script + b"QUIT\r\n", policy=esmtp())
    assert "SG-ESMTP-PARAM" in run.event_ids()
    assert script.split(b"\r\n")[-2] not in bytes(run.server.received)


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (
            b"MAIL FROM:<a@b.example (boss@spam.example)>\r\n",
            b"501 5.1.7 Bad sender address syntax",
        ),
        (b"MAIL FROM:Boss<boss@spam.example>\r\n", b"501 5.1.7 Bad sender address syntax"),
        (MAIL + b"RCPT TO:<<victim@evil.test>>\r\n", b"501 5.1.3 Bad recipient address syntax"),
        (MAIL + b"RCPT TO:x<victim@evil.test>\r\n", b"501 5.1.3 Bad recipient address syntax"),
        (MAIL + b"RCPT TO:<victim@evil.test.>\r\n", b"501 5.1.3 Bad recipient address syntax"),
        (MAIL + b"RCPT TO:<>\r\n", b"501 5.1.3 Bad recipient address syntax"),
    ],
)
def test_what_cannot_be_read_is_refused(script: bytes, reply: bytes) -> None:
    _refused(script, RELAY_ONLY_TO_EXAMPLE_NET, reply, "SG-CHK-PATH-SYNTAX", script[:4])


@pytest.mark.parametrize(
    ("patterns", "allow", "rcpt"),
    [
        # a deny list naming the A-label: the U-label form is the same domain
        ((r"^xn--bcher-kva\.example$",), False, "RCPT TO:<a@b\u00fccher.example>"),
        # an allow list must name both forms: the server routes on the A-label
        ((r"^b\u00fccher\.example$",), True, "RCPT TO:<a@b\u00fccher.example>"),
        # no IDNA form at all (an undecodable byte): even a deny list refuses it
        ((r"^evil\.test$",), False, "RCPT TO:<a@b\udcfcher.example>"),
    ],
)
def test_a_u_label_domain_is_checked_in_both_forms(
    patterns: tuple[str, ...], allow: bool, rcpt: str
) -> None:
    policy = esmtp(recipient_domains=PatternCheck(Verdict.REJECT, patterns, allow=allow))
    _refused(
        MAIL + rcpt.encode("utf-8", "surrogateescape") + b"\r\n",
        policy,
        b"550 5.7.1 Relay access denied",
        "SG-CHK-RECIPIENT-DOMAIN",
        b"RCPT",
    )
    both = (r"^b\u00fccher\.example$", r"^xn--bcher-kva\.example$")
    ok = converse(
        EHLO + MAIL + "RCPT TO:<a@b\u00fccher.example>\r\nQUIT\r\n".encode(),
        policy=esmtp(recipient_domains=PatternCheck(Verdict.REJECT, both, allow=True)),
    )
    assert b"250 2.1.5 Ok" in ok.replies()


# The regular expression simple_mailbox() replaced, kept as its reference.
SIMPLE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*"
    r"@[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*"
)
NEAR = "aZ09!#$%&'*+/=?^_`{|}~-.@\"(),:;<>[\\] \x00\x7f\xe9\u017f\u0131"


@given(st.text(st.sampled_from(NEAR), max_size=14), st.text(max_size=3), st.text(max_size=3))
@example("a@b", "", "")
@example("a.b-c@d_e.f", "<", "> SIZE=1")
@example(".a@b", "", "")
@example("a@b.", "", "")
@example("a@@b", "", "")
def test_simple_mailbox_is_the_regular_expression(inside: str, before: str, after: str) -> None:
    text = before + inside + after
    start, end = len(before), len(before) + len(inside)
    want = SIMPLE.fullmatch(text, start, end) is not None
    assert address.simple_mailbox(text, start, end) is want
