"""``to_cc_count`` never counts fewer addresses than a mail client reads (issue 23).

The client's reading is Python's ``email`` package (policy.default): the number of
addresses its To/Cc header objects give. The gateway's count is an upper bound of
it, streamed with no cap; here the two are compared on generated address lists, and
the walk-rounds of the 0.1.0 count (addresses with no "@", addresses past 16 KiB of
a folded field, past the part of a long line that is kept) are regression tests.
"""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.core.message import AddressCount
from smtpguard.core.policy import Check, Verdict
from tests.core.harness import converse
from tests.core.test_checks import EHLO, MAIL, RCPT, esmtp

atoms = st.text(st.sampled_from("abcxyz019-_"), min_size=1, max_size=6)
quoted = st.text(st.sampled_from('ab ,@;:<>()\\"'), max_size=8).map(
    lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
comments = st.text(st.sampled_from('ab ,@;:<>"'), max_size=8).map(lambda t: f"({t})")
addr_specs = st.tuples(st.one_of(atoms, quoted), atoms, atoms).map(
    lambda t: f"{t[0]}@{t[1]}.{t[2]}"
)
phrases = st.lists(st.one_of(atoms, quoted), min_size=1, max_size=3).map(" ".join)
mailboxes = st.one_of(
    addr_specs,
    st.tuples(phrases, addr_specs).map(lambda t: f"{t[0]} <{t[1]}>"),
    st.tuples(addr_specs, comments).map(lambda t: f"{t[0]} {t[1]}"),
    atoms,  # no domain: still an address to a client
)
groups = st.tuples(phrases, st.lists(mailboxes, max_size=3)).map(
    lambda t: f"{t[0]}: {', '.join(t[1])};"
)
lists = st.lists(st.one_of(mailboxes, groups, st.just("")), min_size=1, max_size=8).map(", ".join)


def client_count(value: str) -> int:
    raw = f"To: {value}\r\n\r\n".encode()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return len(msg["to"].addresses)


@given(lists, st.lists(st.integers(0, 200), max_size=4))
def test_the_count_is_never_below_the_clients(value: str, folds: list[int]) -> None:
    expected = client_count(value)
    count = AddressCount()
    # Folded at white space, as a field may be: the count streams over the lines.
    cuts = sorted({i for i in folds if i < len(value) and value[i] == " "})
    prev = 0
    for cut in [*cuts, len(value)]:
        count.feed(value[prev:cut])
        prev = cut
    assert count.count >= expected, (value, count.count, expected)


def _message(to: bytes) -> bytes:
    return EHLO + MAIL + RCPT + b"DATA\r\nTo: " + to + b"\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n"


REFUSED = b"554 5.6.0 Message refused: too many To/Cc addresses"


@pytest.mark.parametrize(
    "to",
    [
        pytest.param(b"a, b, c, d", id="no-domain"),
        pytest.param(b"g: a, b;, c, d", id="group-no-domain"),
        pytest.param(
            b"(" + (b"x" * 900 + b"\r\n ") * 20 + b") a@x, b@x, c@x, d@x",
            id="past-16-KiB-of-a-folded-field",  # 0.1.0 kept 16 KiB of the field
        ),
    ],
)
def test_addresses_a_client_reads_are_counted(to: bytes) -> None:
    policy = esmtp(to_cc_count=Check(Verdict.REJECT, 3), header_line_length=Check(Verdict.LOG))
    assert client_count(to.decode().replace("\r\n", "")) > 3
    assert REFUSED in bytes(converse(_message(to), policy=policy).client_out)


def test_a_line_longer_than_the_part_kept_is_not_passed_uncounted() -> None:
    policy = esmtp(to_cc_count=Check(Verdict.REJECT, 3), header_line_length=Check(Verdict.LOG))
    to = b"(" + b"x" * 20000 + b") a@x, b@x, c@x, d@x"  # past the part of a line kept
    run = converse(_message(to), policy=policy)
    assert REFUSED in bytes(run.client_out)
    assert any("not counted" in e.message for e in run.events)


def test_under_the_limit_passes() -> None:
    policy = esmtp(to_cc_count=Check(Verdict.REJECT, 3))
    to = b'"Doe, John" <j@x>, (a, b, c) k@x,\r\n l@x'
    assert client_count(to.decode().replace("\r\n", "")) == 3
    assert REFUSED not in bytes(converse(_message(to), policy=policy).client_out)
