"""Differential test: the inspector's MIME parts against a mail client's (issue 23).

Hypothesis builds MIME trees (nested multiparts, digests, ``message/rfc822`` and
``message/delivery-status`` parts, RFC 2231 and RFC 2047 file names with charsets and
percent-encoding, folding, transport padding, repeated delimiters, long parameter
lists, odd and missing content types, ``From `` lines, dots to stuff), renders them to
bytes, and feeds them dot-stuffed to :class:`MessageInspector` in random chunks. The
parts it reports, in order (content type, file name), must be what
``email.message_from_bytes(raw, policy=email.policy.default).walk()`` gives, unless
the inspector refused the message (fail closed).
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard.core.message import MessageInspector
from smtpguard.core.policy import Checks

EXAMPLES = 300
STATS = {"cases": 0, "refused": 0, "parts": 0}

NAMES = ["invoice.exe", "report.pdf", "a b.txt", "caf\u00e9.doc", "\u20ac.zip", "x;y=z.bin", ""]
TYPES = [
    "text/plain", "application/octet-stream", "APPLICATION/PDF", "image/png", "foo",
    "a/b/c", "text/plain; charset=utf-8", "application/x-msdownload", "message/partial",
]  # fmt: skip


@dataclass
class Node:
    headers: list[bytes] = field(default_factory=list)
    body: bytes = b""


def _fold(draw: st.DrawFn, line: bytes) -> bytes:
    """Fold a field at some of its spaces (RFC 5322 §2.2.3)."""
    if not draw(st.booleans()):
        return line
    words = line.split(b" ")
    out = words[0]
    for w in words[1:]:
        out += (b"\r\n " if draw(st.booleans()) else b" ") + w
    return out


def _name_param(draw: st.DrawFn, key: str, name: str) -> bytes:
    raw = name.encode("utf-8")
    how = draw(st.sampled_from(["quoted", "token", "2231", "2231-cont", "2231-cont-enc", "2047",
                                "2047-b", "8bit", "2231-bad-charset"]))  # fmt: skip
    k = key.encode()
    if how == "quoted" or (how == "token" and not name.isascii()):
        return k + b'="' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if how == "token":
        return k + b"=" + (raw or b'""')
    if how == "8bit":
        return k + b'="' + raw + b'"'
    if how == "2047":
        enc = "".join(c if c.isalnum() else f"={ord(c):02X}" for c in name)
        if not name.isascii():
            enc = "".join(f"={b:02X}" for b in raw)
        return k + b'="=?utf-8?q?' + enc.encode() + b'?="'
    if how == "2047-b":
        import base64

        return k + b'="=?utf-8?b?' + base64.b64encode(raw) + b'?="'
    pct = "".join(chr(b) if chr(b).isalnum() else f"%{b:02X}" for b in raw).encode()
    if how == "2231":
        return k + b"*=utf-8'en'" + pct
    if how == "2231-bad-charset":
        return k + b"*=x-unknown''" + pct
    pieces = [pct[i : i + 4] for i in range(0, len(pct), 4)] or [b""]
    if how == "2231-cont-enc":
        first = b"%s*0*=utf-8''%s" % (k, pieces[0])
        return b"; ".join([first] + [b"%s*%d*=%s" % (k, i, p) for i, p in enumerate(pieces) if i])
    plain = [raw[i : i + 3] for i in range(0, len(raw), 3)] or [b""]
    return b"; ".join(b'%s*%d="%s"' % (k, i, p.replace(b'"', b"")) for i, p in enumerate(plain))


@st.composite
def _fields(draw: st.DrawFn, ctype: str | None) -> list[bytes]:
    """Content-* fields of one part, in some order, some repeated."""
    out = []
    if ctype is not None:
        params = [b""]
        if draw(st.booleans()):
            params.append(_name_param(draw, "name", draw(st.sampled_from(NAMES))))
        for i in range(draw(st.integers(0, 3))):  # a longer parameter list
            params.append(b"x-p%d=%s" % (i, draw(st.sampled_from([b"v", b'"q v"', b"=?x?="]))))
        name = draw(st.sampled_from([b"Content-Type", b"content-type", b"CONTENT-TYPE"]))
        out.append(_fold(draw, name + b": " + ctype.encode() + b"; ".join(params)))
    if draw(st.booleans()):
        disp = draw(st.sampled_from([b"attachment", b"inline", b"ATTACHMENT"]))
        value = disp + b"; " + _name_param(draw, "filename", draw(st.sampled_from(NAMES)))
        out.append(_fold(draw, b"Content-Disposition: " + value))
    if draw(st.booleans()):
        cte = draw(st.sampled_from([b"base64", b"7bit", b"Quoted-Printable", b"binary (x)"]))
        out.append(b"Content-Transfer-Encoding: " + cte)
    if out and draw(st.integers(0, 9)) == 0:
        out.append(out[0])  # a repeated field: the first one counts
    order = draw(st.permutations(out))
    return [line + b"\r\n" for line in order]


BODY_LINES = [b"hello", b".starts with a dot", b".", b"From someone", b"--", b"x: y", b"", b" "]


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.sampled_from(BODY_LINES), max_size=4))
    return b"".join(line + b"\r\n" for line in lines)


def _leaf(counter: list[int]) -> st.SearchStrategy[Node]:
    @st.composite
    def build(draw: st.DrawFn) -> Node:
        ctype = draw(st.one_of(st.none(), st.sampled_from(TYPES)))
        headers = draw(_fields(ctype))
        if draw(st.integers(0, 7)) == 0:
            headers.insert(draw(st.integers(0, len(headers))), b"From nobody\r\n")
        return Node(headers, draw(_body()))

    return build()


def _containers(counter: list[int]) -> st.SearchStrategy[Node]:
    def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        @st.composite
        def multipart(draw: st.DrawFn) -> Node:
            counter[0] += 1
            boundary = b"b%d" % counter[0] + draw(st.sampled_from([b"", b"x", b"=_?", b" z"]))
            sub = draw(st.sampled_from([b"mixed", b"alternative", b"digest", b"related"]))
            bparam = draw(
                st.sampled_from([b'boundary="%s"' % boundary, b'boundary*0="%s"' % boundary])
            )
            headers = [_fold(draw, b"Content-Type: multipart/" + sub + b"; " + bparam) + b"\r\n"]
            headers += draw(_fields(None))
            body = draw(st.sampled_from([b"", b"preamble\r\n", b"--not\r\n"]))
            for child in draw(st.lists(children, max_size=3)):
                pad = draw(st.sampled_from([b"", b" ", b"\t \t"]))
                body += b"--" + boundary + pad + b"\r\n"
                if draw(st.integers(0, 9)) == 0:
                    body += b"--" + boundary + b"\r\n"  # a repeated delimiter
                if sub == b"digest" and draw(st.booleans()):  # the default type: message/rfc822
                    child = Node([], b"".join(child.headers) + b"\r\n" + child.body)
                body += b"".join(child.headers) + b"\r\n" + child.body
            if draw(st.integers(0, 5)):
                pad = draw(st.sampled_from([b"", b"  "]))
                body += b"--" + boundary + b"--" + pad + b"\r\n"
                body += draw(st.sampled_from([b"", b"epilogue\r\n"]))
            return Node(headers, body)

        @st.composite
        def enclosed(draw: st.DrawFn) -> Node:
            inner = draw(children)
            ctype = draw(st.sampled_from([b"message/rfc822", b"Message/RFC822", b"message/news"]))
            headers = [b"Content-Type: " + ctype + b"\r\n", *draw(_fields(None))]
            inner_head = [b"Subject: inner\r\n", *inner.headers]
            return Node(headers, b"".join(inner_head) + b"\r\n" + inner.body)

        @st.composite
        def delivery_status(draw: st.DrawFn) -> Node:
            blocks = draw(
                st.lists(
                    st.lists(
                        st.sampled_from(
                            [
                                b"Reporting-MTA: dns; x",
                                b"Action: failed",
                                b"Content-Type: application/x; name=dsn.exe",
                                b" folded",
                                b"Content-Disposition: attachment; filename*0=a; filename*1=.exe",
                            ]
                        ),
                        max_size=3,
                    ),
                    max_size=3,
                )
            )
            body = draw(st.sampled_from([b"", b"\r\n"]))
            body += b"\r\n".join(b"".join(line + b"\r\n" for line in b) for b in blocks)
            return Node([b"Content-Type: message/delivery-status\r\n"], body)

        return st.one_of(multipart(), enclosed(), delivery_status())

    return st.recursive(_leaf(counter), extend, max_leaves=8)


TRICKY = [
    b"Subject : x", b":x", b"From x", b" continued", b"", b"--", b"\xc3\xa9: x",
    b"Content-Type: multipart/mixed; boundary=b1", b"Content-Type: message/rfc822",
    b"Content-Type: text/plain; name=z.exe", b'Content-Type: multipart/mixed; boundary=""',
    b"Content-Type: multipart/mixed", b"Content-Type: multipart/mixed; boundary*=utf-8''b%31",
    b'Content-Type: multipart/digest; boundary="b2 "', b"Content-Type: message/delivery-status",
    b"X-Long: " + b"a" * 9000, b"--b1" + b" " * 9000, b"--b1" + b" " * 9000 + b"x", b"x" * 9000,
    b"Content-Disposition: attachment; filename=" + b"f" * 9000,
]  # fmt: skip


def _mutate(draw: st.DrawFn, raw: bytes) -> bytes:
    """Insert, repeat or drop lines anywhere: delimiters of the message's own
    boundaries (padded, closed, with junk after), odd header lines, long lines."""
    lines = raw.split(b"\r\n")
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(lines)))
        op = draw(st.integers(0, 3))
        delimiters = [ln for ln in lines if ln.startswith(b"--b")]
        if op == 0 and delimiters:
            line = draw(st.sampled_from(delimiters)).rstrip(b" \t-")
            line += draw(st.sampled_from([b"", b"--", b" ", b"-- \t", b"x", b"--x"]))
        elif op == 1:
            line = draw(st.sampled_from(TRICKY))
        elif op == 2 and lines:
            line = lines[min(at, len(lines) - 1)]
        else:
            if lines and at < len(lines):
                del lines[at]
            continue
        lines.insert(at, line)
    return b"\r\n".join(lines)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    node = draw(_containers([0]))
    top = [b"From: a@example.org\r\n", b"Subject: test\r\n", b"MIME-Version: 1.0\r\n"]
    raw = b"".join(top + node.headers) + b"\r\n" + node.body
    raw = _mutate(draw, raw) if draw(st.booleans()) else raw
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"  # SMTP data ends with CRLF


def client_parts(raw: bytes) -> list[tuple[str, str | None]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return [(p.get_content_type(), p.get_filename()) for p in msg.walk()]


def inspector_parts(raw: bytes, cuts: list[int]) -> tuple[list[tuple[str, str | None]], str]:
    wire = b"".join(b"." + ln if ln.startswith(b".") else ln for ln in raw.splitlines(True))
    wire += b".\r\n"
    inspector = MessageInspector(Checks(), record=True)
    prev = 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(wire)}), len(wire)]:
        inspector.feed(wire[prev:cut])
        prev = cut
    assert inspector.parts is not None
    return [(p.content_type, p.filename) for p in inspector.parts], inspector.refused


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=messages(), data=st.data())
def test_the_inspector_reads_the_parts_a_client_reads(raw: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw))), max_size=20))
    want = client_parts(raw)
    got, refused = inspector_parts(raw, cuts)
    STATS["cases"] += 1
    STATS["parts"] += len(want)
    if refused:
        STATS["refused"] += 1
        return  # fail closed
    assert got == want, raw


def test_report_the_differential_counts() -> None:
    # Runs after the property test (file order): how many cases, parts and refusals.
    if STATS["cases"]:
        print(f"\nMIME differential: {STATS}")
    assert STATS["refused"] <= STATS["cases"]
