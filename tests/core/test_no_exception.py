"""No input raises out of the core (docs/design.md#reading-as-the-peers-read, issue 23).

A client's bytes are drawn from SMTP-shaped pieces and their hostile variants: MAIL
and RCPT with every path form, parameters whose numbers and keywords are written
with non-ASCII digits and letters (``SIZE=²``, a long s for "S", ``BDAT ٣``), MIME headers
with broken parameters, and raw bytes; every check is on, in both modes. The session
must answer all of it with SMTP replies: an exception here is what the gateway turns
into ``421`` and an ``ERROR`` line with a traceback, which any client could provoke.
The regressions found this way are kept as explicit examples.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtpguard.core.grammar import NUMBER_CLAMP, ascii_number, ascii_upper
from smtpguard.core.policy import Check, Checks, Mode, PatternCheck, Policy, Verdict
from tests.core.harness import Harness

# Characters str.isdigit()/str.upper() read differently from RFC 5234's ASCII.
ODD = ["²", "٣", "൧", "\U0001d7d7", "\u017f", "ß", "\u0131", "İ", "\u00a0", "\u2028", "ﬀ", "Ⅻ"]
ODD += ["\udcff"]  # a byte that is not UTF-8, as decoded

words = st.one_of(
    st.sampled_from(["SIZE", "BODY", "SMTPUTF8", "NOTIFY", "RET", "ENVID", "AUTH", "XYZ"]),
    st.text(st.sampled_from([*ODD, "a", "Z", "1", "=", "<", ">", "@", '"', " ", ":"]), max_size=8),
)
numbers = st.one_of(
    st.integers(0, 10**30).map(str),
    st.text(st.sampled_from(["0", "9", *ODD]), min_size=1, max_size=6),
)
params = st.lists(
    st.tuples(words, numbers).map(lambda t: f"{t[0]}={t[1]}") | words, max_size=3
).map(" ".join)
paths = st.one_of(
    st.sampled_from(
        [
            "<a@example.org>",
            "<>",
            "a@example.org",
            " <a@example.org>",
            "<@r.example:a@example.org>",
            '<"a b"@example.org>',
            "<a@example.org",
            "a@example.org>",
            "Name <a@example.org>",
            "<<a@b>>",
            "",
        ]
    ),
    st.text(st.sampled_from([*ODD, *'a@.<>"\\ :,']), max_size=20),
)
commands = st.one_of(
    st.tuples(
        st.sampled_from(["MAIL FROM:", "RCPT TO:", "mail from:", "RCPT TO: "]), paths, params
    ).map(lambda t: f"{t[0]}{t[1]} {t[2]}".rstrip()),
    st.tuples(
        st.sampled_from(["BDAT", "BDAT ", "bdat"]), numbers, st.sampled_from(["", " LAST"])
    ).map(lambda t: f"{t[0]} {t[1]}{t[2]}"),
    st.sampled_from(["EHLO c", "HELO c", "RSET", "NOOP", "DATA", "QUIT", "VRFY x", "AUTH PLAIN"]),
    st.text(st.sampled_from([*ODD, "A", "M", " ", ":", "<", ">"]), max_size=12),
)
headers = st.lists(
    st.sampled_from(
        [
            "Content-Type: multipart/mixed; boundary=B",
            "Content-Type: multipart/mixed; boundary*0=B; boundary*1*=''%ZZ",
            "Content-Type: text/plain; name*=utf-8''%FF%FE; name*0*=x''",
            "Content-Disposition: attachment; filename==?utf-8?b?////?=",
            'Content-Disposition: attachment; filename="=?x-unknown?q?a?="',
            "Content-Disposition: attachment; filename*=us-ascii'en'%",
            "Content-Transfer-Encoding: ²bit",
            "Content-Type: message/rfc822",
            'Content-Type: ;;;="',
            'To: ²@x, "a,b"@y',
            ' folded; name="z"',
            "--B",
            "--B--",
            "--B  ",
        ]
    ),
    max_size=8,
).map(lambda hs: "\r\n".join(hs).encode("utf-8", "surrogateescape"))


def script_of(cmds: list[str], head: bytes, body: bytes) -> bytes:
    out = bytearray(b"EHLO c\r\n")
    for c in cmds:
        out += c.encode("utf-8", "surrogateescape") + b"\r\n"
    out += b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    out += head + b"\r\n\r\n" + body + b"\r\n.\r\nQUIT\r\n"
    return bytes(out)


def all_checks(action: Verdict) -> Checks:
    on = Check(action, 3)
    deny = PatternCheck(action, ("x",))
    return Checks(
        rcpt_count=Check(action, 5),
        header_size=Check(action, 10_000),
        to_cc_count=on,
        sender_length=Check(action, 40),
        invalid_recipients=on,
        message_size=Check(action, 1_000),
        mime_filename_length=Check(action, 10),
        special_characters=action,
        sender_pattern=deny,
        recipient_domains=PatternCheck(action, ("^example\\.net$",), allow=True),
        mime_filename_pattern=deny,
        mime_type_pattern=deny,
        transfer_encoding_pattern=deny,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from([Mode.ESMTP, Mode.MAILGUARD]),
    action=st.sampled_from([Verdict.REJECT, Verdict.LOG, Verdict.DROP]),
    cmds=st.lists(commands, max_size=6),
    head=headers,
    body=st.binary(max_size=60),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
@example(Mode.ESMTP, Verdict.REJECT, ["MAIL FROM:<a@example.org> SIZE=²"], b"", b"", [])
@example(Mode.ESMTP, Verdict.REJECT, ["BDAT ²"], b"", b"", [])
@example(Mode.ESMTP, Verdict.REJECT, ["BDAT ٣ LAST"], b"", b"", [])
@example(Mode.ESMTP, Verdict.REJECT, ["MAIL FROM:<a@example.org> SIZE=" + "9" * 5000], b"", b"", [])
def test_no_input_raises_out_of_the_core(
    mode: Mode, action: Verdict, cmds: list[str], head: bytes, body: bytes, cuts: list[int]
) -> None:
    policy = dataclasses.replace(
        Policy.for_mode(mode, hostname="gw"), checks=all_checks(action), max_pending=8
    )
    h = Harness(policy, trace=False).start()
    h.client(script_of(cmds, head, body), cuts).client_eof()
    assert h.run.client_out  # it answered


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("042", 42),
        ("18446744073709551616", NUMBER_CLAMP),
        ("9" * 5000, NUMBER_CLAMP),
        ("", -1),
        ("²", -1),
        ("٣", -1),
        ("1²", -1),
        ("+1", -1),
        (" 1", -1),
        ("1_000", -1),
    ],
)
def test_ascii_number(text: str, value: int) -> None:
    assert ascii_number(text) == value


@given(st.text(max_size=20))
def test_ascii_number_is_the_rfc_digit_reading(text: str) -> None:
    value = ascii_number(text)
    if text and all("0" <= c <= "9" for c in text):
        assert value == min(int(text), NUMBER_CLAMP)
    else:
        assert value == -1


@given(st.text(max_size=20))
def test_ascii_upper_changes_only_ascii_letters(text: str) -> None:
    up = ascii_upper(text)
    assert len(up) == len(text)
    for a, b in zip(text, up, strict=True):
        assert b == (a.upper() if "a" <= a <= "z" else a)
