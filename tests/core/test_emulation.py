"""PIX 6.x Mailguard emulation (lab tool): faithful, including its split-EOD bug."""

from __future__ import annotations

from smtpguard.core.banner import pix_rewrite
from smtpguard.core.policy import BannerPolicy, Emulation, PixRewrite, Policy
from tests.core.harness import Harness, converse

TXN = (
    b"HELO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n"
    b".\r\nQUIT\r\n"
)


def pix(rewrite: PixRewrite = PixRewrite.NOOP, bug: bool = False) -> Policy:
    return Policy(
        banner=BannerPolicy.PIX, emulation=Emulation(pix=True, rewrite=rewrite, split_eod_bug=bug)
    )


def test_rewrite_in_place() -> None:
    assert pix_rewrite(b"EHLO c.example\r\n", PixRewrite.NOOP) == b"NOOP c.example\r\n"
    assert pix_rewrite(b"STARTTLS\r\n", PixRewrite.XXXX) == b"XXXXXXXX\r\n"


def test_disallowed_verbs_reach_the_server_mangled() -> None:
    run = converse(b"EHLO c\r\nVRFY root\r\nQUIT\r\n", policy=pix())
    assert bytes(run.server.received) == b"NOOP c\r\nNOOP root\r\nQUIT\r\n"
    assert run.replies()[0].startswith(b"220 ") and set(run.replies()[0][4:]) <= set(b"*20")
    assert run.replies()[1:3] == [b"250 2.0.0 Ok", b"250 2.0.0 Ok"]  # the tell-tale bare OK
    run = converse(b"EHLO c\r\nQUIT\r\n", policy=pix(PixRewrite.XXXX))
    assert bytes(run.server.received) == b"XXXX c\r\nQUIT\r\n"
    assert run.replies()[1] == b"502 5.5.2 Error: command not recognized"


def test_lock_step_forwarding() -> None:
    h = Harness(pix(), auto=False).start().release()
    h.client(b"HELO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\n")
    assert bytes(h.run.server.received) == b"HELO c\r\n"
    h.release()
    assert bytes(h.run.server.received).endswith(b"MAIL FROM:<a@x.org>\r\n")


def test_whole_end_of_data_passes_even_with_the_bug() -> None:
    run = converse(TXN, policy=pix(bug=True))
    assert run.server.messages == [b"Subject: s\r\n\r\nhi\r\n"]
    assert run.replies()[-2:] == [b"250 2.0.0 Ok: queued as Q1", b"221 2.0.0 Bye"]


def test_split_end_of_data_is_swallowed_with_the_bug() -> None:
    cut = TXN.index(b"\r\n.\r\n") + 2  # "...hi\r\n" | ".\r\nQUIT"
    h = Harness(pix(bug=True)).start()
    h.client(TXN[:cut]).client(TXN[cut:])
    assert h.run.server.messages == []  # the server never got the terminator
    assert b"queued" not in h.run.client_out  # and the client never gets a reply
    assert "SG-EMULATE-SPLIT-EOD" in h.run.event_ids()
    assert not h.run.client_closed
    h.client_eof()  # the sender gives up
    assert h.run.client_closed and h.run.server.messages == []


def test_split_end_of_data_passes_without_the_bug() -> None:
    cut = TXN.index(b"\r\n.\r\n") + 2
    run = converse(TXN, [cut], policy=pix())
    assert len(run.server.messages) == 1
