"""The MIME checks read the parts a mail client reads (issue 23, item 3).

Each hole below let a file name past the checks on the old inspector while Python's
``email`` (policy.default, our model of a mail client) read it; they go through the
session (tests/core/conftest.py re-cuts every one of them at random points and byte
by byte). Then the reader's bounds, which refuse rather than pass, and a 100 MB
message of many parts that streams with flat retained state.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.core.message import MessageInspector
from smtpguard.core.mime import ALL, MimeReader, header_line
from smtpguard.core.policy import (
    Check,
    Checks,
    MimeStructureCheck,
    Mode,
    PatternCheck,
    Policy,
    Verdict,
)
from tests.core.harness import Run, converse

EHLO = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
EXE = PatternCheck(Verdict.REJECT, (r".*\.exe",))
REFUSED = b"554 5.7.1 Message refused: attachment type not allowed"
TOO_LONG = b"421 4.7.0 MIME file name of"
STRUCTURE = b"554 5.6.0 Message refused: MIME structure not accepted"


def esmtp(**checks: object) -> Policy:
    return Policy.for_mode(Mode.ESMTP, hostname="gw", checks=Checks(**checks))  # type: ignore[arg-type]


def mixed(*parts: bytes, boundary: bytes = b"B", headers: bytes = b"") -> bytes:
    """A multipart/mixed message of ``parts`` (each its header block and body)."""
    body = b"".join(b"--" + boundary + b"\r\n" + p for p in parts) + b"--" + boundary + b"--\r\n"
    return (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" + boundary + b'"\r\n'
        + headers + b"\r\n" + body
    )  # fmt: skip


def send(message: bytes, policy: Policy, cuts: list[int] | None = None) -> Run:
    """The message through a session, dot-stuffed as a client sends it."""
    stuffed = b"".join(
        b"." + line if line.startswith(b".") else line for line in message.splitlines(True)
    )
    script = EHLO + stuffed + b".\r\nQUIT\r\n"
    return converse(script, cuts or (), policy=policy)


def client_names(message: bytes) -> set[str]:
    msg = email.message_from_bytes(message, policy=email.policy.default)
    return {p.get_filename() for p in msg.walk()} - {None}  # type: ignore[operator]


def refused(run: Run, reply: bytes, event: str) -> bool:
    return event in run.event_ids() and reply in run.client_out and not run.server.messages


ATTACH = b"Content-Type: application/octet-stream\r\n"
# (id, message, the name a client reads)
HOLES = [
    (
        "rfc2231-continuations",
        mixed(b"Content-Disposition: attachment; filename*0=\"invoice\"; filename*1=\".exe\"\r\n"
              b"\r\nAAAA\r\n"),
        "invoice.exe",
    ),
    (
        "rfc2231-charset-percent",
        mixed(b"Content-Type: application/octet-stream; name*=utf-8''invoice%2Eexe\r\n\r\nAA\r\n"),
        "invoice.exe",
    ),
    (
        "rfc2047-in-quoted-filename",
        mixed(ATTACH + b'Content-Disposition: attachment; filename="=?utf-8?q?invoice=2Eexe?="\r\n'
              b"\r\nAAAA\r\n"),
        "invoice.exe",
    ),
    (
        "delimiter-with-transport-padding",
        mixed(b"Content-Type: text/plain\r\n\r\nhello\r\n", boundary=b"B").replace(
            b"--B--\r\n", b"--B \t \r\n" + ATTACH
            + b'Content-Disposition: attachment; filename="invoice.exe"\r\n\r\nAAAA\r\n--B--\r\n'
        ),
        "invoice.exe",
    ),
    (
        "attachment-inside-message-rfc822",
        mixed(b"Content-Type: message/rfc822\r\n\r\n"
              + mixed(ATTACH + b'Content-Disposition: attachment; filename="invoice.exe"\r\n'
                      b"\r\nA\r\n", boundary=b"INNER", headers=b"Subject: fwd\r\n")),
        "invoice.exe",
    ),
    (
        "digest-part-defaults-to-message-rfc822",
        mixed(b"\r\nContent-Type: application/octet-stream; name=\"invoice.exe\"\r\n\r\nA\r\n"
              ).replace(b"multipart/mixed", b"multipart/digest"),
        "invoice.exe",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "message", "want"), HOLES, ids=[h[0] for h in HOLES])
def test_a_name_the_client_reads_is_the_name_checked(name: str, message: bytes, want: str) -> None:
    assert want in client_names(message)  # the hole is real: a client reads this name
    policy = esmtp(mime_filename_pattern=EXE)
    for cuts in (None, list(range(7, 2000, 13))):
        run = send(message, policy, cuts)
        assert refused(run, REFUSED, "SG-CHK-MIME-FILENAME"), (run.event_ids(), run.client_out)
    harmless = message.replace(b"invoice", b"report").replace(b".exe", b".pdf")
    harmless = harmless.replace(b"2Eexe", b"2Epdf")
    run = send(harmless, policy)
    assert "SG-CHK-MIME-FILENAME" not in run.event_ids() and len(run.server.messages) == 1


def test_a_long_line_hides_no_name() -> None:
    # One header line of 3000 octets (header_line_length raised): the name sits past
    # the 2048 octets the old inspector kept of a line.
    message = mixed(
        b'Content-Type: application/octet-stream; x="' + b"v" * 3000 + b'"; name="invoice.exe"\r\n'
        b"\r\nAAAA\r\n"
    )
    assert "invoice.exe" in client_names(message)
    policy = esmtp(mime_filename_pattern=EXE, header_line_length=Check(Verdict.DROP, 5000))
    assert refused(send(message, policy), REFUSED, "SG-CHK-MIME-FILENAME")


def test_a_long_folded_field_hides_no_name() -> None:
    # 17 KiB of folded parameters before the name: past the 16 KiB of a field the old
    # inspector unfolded. Past header_block it is refused; within a raised bound, read.
    message = mixed(
        b"Content-Type: application/octet-stream;\r\n"
        + b"".join(b" x%d=%s;\r\n" % (i, b"v" * 140) for i in range(120))
        + b' name="invoice.exe"\r\n\r\nAAAA\r\n'
    )
    assert "invoice.exe" in client_names(message)
    run = send(message, esmtp(mime_filename_pattern=EXE))
    assert refused(run, STRUCTURE, "SG-CHK-MIME-STRUCTURE")
    raised = MimeStructureCheck(header_block=32768)
    run = send(message, esmtp(mime_filename_pattern=EXE, mime_structure=raised))
    assert refused(run, REFUSED, "SG-CHK-MIME-FILENAME")


def test_an_unstuffed_dot_delimiter_is_a_delimiter() -> None:
    # ".--B" on the wire is "--B" to the server (RFC 5321 §4.5.2 removes the dot), so
    # the part after it is a part to the client.
    message = mixed(b"Content-Type: text/plain\r\n\r\nhi\r\n")
    script = EHLO + message.replace(b"--B--\r\n", b"") + (
        b".--B\r\nContent-Type: application/octet-stream; name=\"invoice.exe\"\r\n\r\nA\r\n"
        b"--B--\r\n.\r\nQUIT\r\n"
    )  # fmt: skip
    run = converse(script, policy=esmtp(mime_filename_pattern=EXE))
    assert refused(run, REFUSED, "SG-CHK-MIME-FILENAME")


LONG_NAME = "n" * 300 + ".pdf"
LENGTH_HOLES = [
    (
        "rfc2231-continuations",
        mixed(b"Content-Disposition: attachment; "
              + b"; ".join(b'filename*%d="%s"' % (i, LONG_NAME[i * 50 : i * 50 + 50].encode())
                           for i in range(7))
              + b"\r\n\r\nA\r\n"),
    ),
    (
        "name-beyond-2048-octets-of-a-line",
        mixed(b'Content-Disposition: attachment; x="' + b"v" * 2100 + b'"; filename="%s"\r\n'
              b"\r\nA\r\n" % LONG_NAME.encode()),
    ),
    (
        "attachment-inside-message-rfc822",
        mixed(b"Content-Type: message/rfc822\r\n\r\n"
              + mixed(b'Content-Disposition: attachment; filename="%s"\r\n\r\nA\r\n'
                      % LONG_NAME.encode(), boundary=b"IN")),
    ),
    (
        "delimiter-with-transport-padding",
        mixed(b"Content-Type: text/plain\r\n\r\nhello\r\n").replace(
            b"--B--\r\n",
            b"--B\t\r\nContent-Disposition: attachment; filename=\"%s\"\r\n\r\nA\r\n--B--\r\n"
            % LONG_NAME.encode(),
        ),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "message"), LENGTH_HOLES, ids=[h[0] for h in LENGTH_HOLES])
def test_the_file_name_length_is_the_length_the_client_reads(name: str, message: bytes) -> None:
    assert LONG_NAME in client_names(message)
    lines = Check(Verdict.DROP, 5000)  # the 2100-octet line is not refused for its length
    run = send(message, esmtp(header_line_length=lines), list(range(11, 3000, 17)))
    assert "SG-CHK-MIME-FILENAME-LENGTH" in run.event_ids()
    assert TOO_LONG in run.client_out and run.client_closed and not run.server.messages


# -- bounds: refused, never passed ----------------------------------------------


def nested(depth: int) -> bytes:
    message = b'Content-Type: text/plain; name="deep.exe"\r\n\r\nA\r\n'
    for i in range(depth):
        message = mixed(message, boundary=b"L%d" % i)
    return message


def test_nesting_beyond_the_depth_is_refused() -> None:
    policy = esmtp(mime_filename_pattern=EXE, mime_structure=MimeStructureCheck(limit=5))
    run = send(nested(5), policy)
    assert refused(run, REFUSED, "SG-CHK-MIME-FILENAME")  # read to the bottom
    run = send(nested(6), policy)
    assert refused(run, STRUCTURE, "SG-CHK-MIME-STRUCTURE")
    assert any("deeper than 5" in e.message for e in run.events)


def test_fields_over_the_block_bound_are_refused() -> None:
    params = b" a=%s;\r\n" % (b"b" * 200) * 100  # 20 KiB
    field = b"Content-Type: text/plain;\r\n" + params + b" name=x.txt\r\n"
    message = mixed(field + b"\r\nA\r\n")
    run = send(message, esmtp(mime_filename_pattern=EXE))
    assert refused(run, STRUCTURE, "SG-CHK-MIME-STRUCTURE")
    # the same fields within a raised bound are read
    policy = esmtp(mime_filename_pattern=EXE, mime_structure=MimeStructureCheck(header_block=32768))
    run = send(message, policy)
    assert "SG-CHK-MIME-STRUCTURE" not in run.event_ids() and len(run.server.messages) == 1


def test_parts_and_total_bounds() -> None:
    message = mixed(
        *[b'Content-Type: text/plain; name="p%d.txt"\r\n\r\nA\r\n' % i for i in range(30)]
    )
    bounded = MimeStructureCheck(parts=20)
    run = send(message, esmtp(mime_filename_pattern=EXE, mime_structure=bounded))
    assert refused(run, STRUCTURE, "SG-CHK-MIME-STRUCTURE")
    bounded = MimeStructureCheck(header_total=1024)
    run = send(message, esmtp(mime_filename_pattern=EXE, mime_structure=bounded))
    assert refused(run, STRUCTURE, "SG-CHK-MIME-STRUCTURE")
    run = send(message, esmtp(mime_filename_pattern=EXE))
    assert len(run.server.messages) == 1


def test_a_header_email_cannot_decode_is_refused() -> None:
    # A parameter name with no "=": email's own parser raises IndexError on it, so
    # the client cannot read this message at all.
    message = mixed(b"Content-Type: application/octet-stream; name*0*\r\n\r\nA\r\n")
    run = send(message, esmtp(mime_filename_pattern=EXE))
    assert refused(run, STRUCTURE, "SG-CHK-MIME-STRUCTURE")
    assert any("not readable (IndexError)" in e.message for e in run.events)


def test_with_the_structure_check_off_the_mime_checks_fire() -> None:
    off = MimeStructureCheck(limit=None)
    policy = esmtp(
        mime_filename_length=Check(Verdict.DROP, None),
        mime_type_pattern=PatternCheck(Verdict.LOG, ("application/x-msdownload",)),
        mime_filename_pattern=EXE,
        mime_structure=off,
    )
    run = send(nested(25), policy)  # deeper than 20, the bound while the check is off
    assert refused(run, STRUCTURE, "SG-CHK-MIME-FILENAME")
    assert "SG-CHK-MIME-STRUCTURE" not in run.event_ids()
    assert any("MIME parts not checked" in e.message for e in run.events)
    run = send(nested(25), esmtp(mime_structure=off))  # mime_filename_length: drop
    assert "SG-CHK-MIME-FILENAME-LENGTH" in run.event_ids() and run.client_closed
    assert not run.server.messages


def test_normalize_mode_reads_what_the_server_reads() -> None:
    # A bare LF before ".--B": the normaliser stuffs the dot, the server keeps it, so
    # it is no delimiter; the part stays body text. A CRLF before it: a delimiter.
    from smtpguard.core.policy import Smuggling

    policy = Policy.for_mode(
        Mode.ESMTP, hostname="gw", smuggling=Smuggling.NORMALIZE,
        checks=Checks(mime_filename_pattern=EXE),
    )  # fmt: skip
    part = b'Content-Type: application/octet-stream; name="invoice.exe"\r\n\r\nA\r\n'
    head = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\nhi"
    run = converse(EHLO + head + b"\r\n.--B\r\n" + part + b".\r\nQUIT\r\n", policy=policy)
    assert refused(run, REFUSED, "SG-CHK-MIME-FILENAME")
    run = converse(EHLO + head + b"\n.--B\r\n" + part + b".\r\nQUIT\r\n", policy=policy)
    assert "SG-CHK-MIME-FILENAME" not in run.event_ids() and len(run.server.messages) == 1


def test_the_reader_is_off_without_mime_checks() -> None:
    off = Checks(mime_filename_length=Check(Verdict.DROP, None))
    assert MessageInspector(off)._mime is None
    assert MessageInspector(Checks())._mime is not None  # mime_filename_length is on


# -- streaming: flat retained state ----------------------------------------------


def many_parts(size: int, part: int) -> Iterator[bytes]:
    yield b'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\npreamble\r\n'
    line = b"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\r\n"
    body = line * (part // len(line))
    sent, n = 0, 0
    while sent < size:
        block = (
            b'--=_b\r\nContent-Type: application/pdf; name="f%d.pdf"\r\n'
            b'Content-Disposition: attachment;\r\n filename*0="f%d"; filename*1=".pdf"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" % (n, n)
        ) + body
        n += 1
        sent += len(block)
        yield block
    yield b"--=_b--\r\n.\r\n"


def test_a_100_mb_message_of_many_parts_streams_with_flat_state() -> None:
    checks = Checks(mime_filename_pattern=EXE)
    inspector = MessageInspector(checks)
    mime = inspector._mime
    assert mime is not None
    pending = b""
    peak = 0
    for block in many_parts(100 * 1024 * 1024, 100 * 1024):
        pending += block
        while len(pending) >= 65536:  # chunks that cut lines anywhere
            cut = 65536 - (len(pending) % 977)
            assert inspector.feed(pending[:cut]) == []
            pending = pending[cut:]
            retained = (
                len(inspector._carry)
                + sum(len(f) for fr in mime._frames for f in fr.fields)
                + len(mime._frames) * 100
                + len(mime.parts) * 100
            )
            peak = max(peak, retained)
            assert len(mime._frames) <= 2 and len(mime._active) <= 1 and not mime.parts
    assert inspector.feed(pending) == []
    assert inspector.size > 100 * 1024 * 1024
    assert mime._nparts > 1000 and not mime.failure
    assert peak < 16 * 1024  # a line prefix and one part's header fields, at most


def test_the_reader_asks_for_every_line_only_in_headers() -> None:
    reader = MimeReader(MimeStructureCheck())
    assert reader.mode == ALL
    for line in (b"Content-Type: multipart/mixed; boundary=x\r\n", b"\r\n", b"pre\r\n"):
        reader.line(line)
    assert reader.mode != ALL  # the preamble: only delimiter candidates
    reader.line(b"--x\r\n")
    assert reader.mode == ALL  # a part header


def test_a_field_the_decoder_would_chew_on_is_refused() -> None:
    # email's work grows with the square of ";", quotes and spaces in a field: 8000
    # of them would take it most of a second; over 256 are refused at once.
    lines = b"Content-Type: text/plain" + b";\r\n " * 300 + b"name=a.txt\r\n"
    run = send(mixed(lines + b"\r\nA\r\n"), esmtp(mime_filename_pattern=EXE))
    assert refused(run, STRUCTURE, "SG-CHK-MIME-STRUCTURE")
    assert any("delimiters" in e.message for e in run.events)


_HEADER_RE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")  # email.feedparser.headerRE


@given(
    st.lists(
        st.sampled_from(
            [
                b"From ",
                b"From",
                b"Subject",
                b"X-A",
                b":",
                b" ",
                b"\t",
                b"\x7f",
                b"\xe9",
                b"~",
                b"\r\n",
                b"a",
            ]
        ),
        max_size=5,
    ).map(b"".join)
)
def test_header_line_is_the_feedparsers_header_line(line: bytes) -> None:
    assert header_line(line) == (_HEADER_RE.match(line) is not None)
