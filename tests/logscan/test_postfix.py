"""Postfix parser details that the fixtures do not show."""

from __future__ import annotations

from smtpguard.logscan.formats import Context, postfix
from smtpguard.logscan.model import Delivered

MSG = [
    b"Feb  7 17:10:41 mx postfix/smtpd[2130]: 4Tq1nF0Qz4z9rKC: client=a.example[192.0.2.1]\n",
    b"Feb  7 17:10:42 mx postfix/cleanup[2105]: 4Tq1nF0Qz4z9rKC: message-id=<m1@a.example>\n",
    b"Feb  7 17:10:42 mx postfix/qmgr[880]: 4Tq1nF0Qz4z9rKC: from=<s@a.example>, size=48, "
    b"nrcpt=1 (queue active)\n",
    b"Feb  7 17:10:42 mx postfix/local[2131]: 4Tq1nF0Qz4z9rKC: to=<r@b.example>, "
    b"relay=local, delay=0.4, dsn=2.0.0, status=sent (delivered to mailbox)\n",
]


def _delivered(lines: list[bytes]) -> list[Delivered]:
    events = postfix.parse(enumerate(lines, 1), Context("x", year=2024))
    return [e for e in events if isinstance(e, Delivered)]


def test_a_reused_queue_id_without_removed_keeps_the_earlier_copy() -> None:
    # The "removed" line of the first message is missing (lost or rotated away).
    copies = _delivered([*MSG, *MSG])
    assert [(d.line, d.message_id, d.rcpt_to) for d in copies] == [
        (1, "m1@a.example", ("r@b.example",)),
        (5, "m1@a.example", ("r@b.example",)),
    ]


def test_lines_with_crlf_and_rfc3339_stamps_parse_alike() -> None:
    classic = _delivered(MSG)
    iso = [b"2024-02-07T" + raw[7:].replace(b"\n", b"\r\n") for raw in MSG]
    (d,) = _delivered(iso)
    assert (d.message_id, d.mail_from, d.rcpt_to, d.size, d.peer, d.session) == (
        classic[0].message_id,
        classic[0].mail_from,
        classic[0].rcpt_to,
        classic[0].size,
        classic[0].peer,
        classic[0].session,
    )
