"""Regression tests for the smuggling and injection holes found by outside scanners
and hostile peers (docs/design.md#framing). Each conversation runs whole and one byte at a time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from smtpguard.config.load import load
from smtpguard.core.policy import BannerPolicy, Checks, Mode, Policy, Smuggling, StartTls
from smtpguard.errors import ConfigError
from tests.core.harness import FakeServer, Harness, converse

EHLO = b"EHLO c\r\n"
ENVELOPE = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
SMUGGLED = b"MAIL FROM:<evil@x.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n"


def esmtp(**kw: object) -> Policy:
    return dataclasses.replace(Policy.for_mode(Mode.ESMTP, hostname="gw"), **kw)  # type: ignore[arg-type]


def bytewise(data: bytes) -> range:
    return range(1, len(data))


# -- 1. normalize never creates an end of data -----------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"a\r\n.\n" + SMUGGLED,
        b"a\r\n.\r" + SMUGGLED,
        b"a\r\n.\r\r\n" + SMUGGLED,
        b"a\r\r\n.\r\r\n" + SMUGGLED,
        b".\n" + SMUGGLED,  # the data's very first line
        b"a\n.\n" + SMUGGLED,
        b"a\r.\r" + SMUGGLED,
    ],
)
@pytest.mark.parametrize("smuggling", [Smuggling.NORMALIZE, Smuggling.REJECT])
def test_no_smuggled_transaction_reaches_the_server(body: bytes, smuggling: Smuggling) -> None:
    script = EHLO + ENVELOPE + b"DATA\r\n" + body + b".\r\nQUIT\r\n"
    for cuts in ((), bytewise(script)):
        run = converse(script, cuts, policy=esmtp(smuggling=smuggling))
        servers = run.servers
        # the server never saw a second transaction: no MAIL after the DATA began
        for srv in servers:
            after_data = bytes(srv.received).partition(b"DATA\r\n")[2]
            assert len(srv.messages) <= 1
            assert b"\r\nMAIL FROM:<evil" not in b"\r\n" + after_data.split(b"\r\n.\r\n")[-1]
        delivered = [m for s in servers for m in s.messages]
        if smuggling is Smuggling.NORMALIZE:
            assert len(delivered) == 1 and b"evil@x.org" in delivered[0]  # stays data
            assert run.replies()[-2].startswith(b"250 2.0.0 Ok: queued")
        else:
            assert delivered == []
            assert run.replies()[-2].startswith(b"550 5.6.0 Message refused")


def test_normalize_refuses_nul_after_a_bare_line_end() -> None:
    script = EHLO + ENVELOPE + b"DATA\r\na\n\x00.\r\n.\r\nQUIT\r\n"
    run = converse(script, policy=esmtp(smuggling=Smuggling.NORMALIZE))
    assert [m for s in run.servers for m in s.messages] == []
    assert b"550 5.6.0 Message refused: NUL" in run.client_out


# -- 2. a reply during message data is a desync ---------------------------------------


def test_reply_during_data_aborts_the_upstream_and_is_never_matched_later() -> None:
    h = Harness(esmtp()).start()
    h.client(EHLO + ENVELOPE + b"DATA\r\nSubject: x\r\n\r\nhello\r\n")
    first = h.run.server
    # a lenient (or hostile) server took part of the data as a message and answers
    h.server_says(b"250 2.0.0 Ok: queued as EARLY\r\n")
    assert "SG-UPSTREAM-DESYNC" in h.run.event_ids()
    assert first.closed and first.aborted
    h.client(b"more\r\n.\r\nNOOP\r\nQUIT\r\n")
    replies = h.run.replies()
    assert b"EARLY" not in h.run.client_out
    assert replies[-3].startswith(b"451 4.5.0 Mail server out of step")
    assert replies[-2:] == [b"250 2.0.0 Ok", b"221 2.0.0 Bye"]  # the fresh server's
    assert len(h.run.servers) == 2 and b"more" not in h.run.servers[1].received


def test_unsolicited_reply_between_commands_drops_the_upstream() -> None:
    h = Harness(esmtp()).start()
    h.client(EHLO)
    h.server_says(b"250 2.0.0 Ok: queued as GHOST\r\n")
    assert "SG-UPSTREAM-UNSOLICITED" in h.run.event_ids()
    h.client(b"NOOP\r\n")
    assert b"GHOST" not in h.run.client_out
    assert h.run.replies()[-1].startswith(b"421 4.4.2")


# -- 3. AUTH responses are framed like every line ---------------------------------------


@dataclasses.dataclass
class AuthServer(FakeServer):
    """Offers AUTH LOGIN: 334 until a response line, which it accepts; ``*`` cancels."""

    in_auth: bool = False

    def answer(self, line: bytes) -> bytes:
        if self.in_auth:
            self.in_auth = False
            return b"501 5.7.0 Authentication aborted\r\n" if line == b"*" else b"235 2.7.0 ok\r\n"
        if line.upper().startswith(b"AUTH"):
            self.in_auth = True
            return b"334 VXNlcm5hbWU6\r\n"
        return super().answer(line)


@pytest.mark.parametrize(
    "response",
    [
        b"dXNlcg==\rXCLIENT ADDR=6.6.6.6\r\n",
        b"dXNlcg==\nXCLIENT ADDR=6.6.6.6\r\n",
        b"dXNlcg==\x00XCLIENT ADDR=6.6.6.6\r\n",
    ],
)
def test_auth_response_with_bad_bytes_is_cancelled_not_relayed(response: bytes) -> None:
    script = EHLO + b"AUTH LOGIN\r\n" + response + b"NOOP\r\nQUIT\r\n"
    for cuts in ((), bytewise(script)):
        h = Harness(esmtp())
        h.template = AuthServer()
        h.start().client(script, cuts).client_eof()
        received = bytes(h.run.server.received)
        assert b"XCLIENT" not in received and b"dXNlcg" not in received
        assert b"AUTH LOGIN\r\n*\r\nNOOP\r\n" in received
        replies = h.run.replies()
        assert replies[-3].startswith(b"501 5.5.2 Authentication cancelled")
        assert replies[-2:] == [b"250 2.0.0 Ok", b"221 2.0.0 Bye"]


def test_clean_auth_response_is_relayed() -> None:
    h = Harness(esmtp())
    h.template = AuthServer()
    h.start().client(EHLO + b"AUTH LOGIN\r\ndXNlcg==\r\nQUIT\r\n").client_eof()
    assert b"AUTH LOGIN\r\ndXNlcg==\r\n" in h.run.server.received
    assert h.run.replies()[-2] == b"235 2.7.0 ok"


# -- 4. STARTTLS (terminate) discards the plaintext state ------------------------------


def test_envelope_given_before_starttls_does_not_survive_it() -> None:
    h = Harness(esmtp(starttls=StartTls.TERMINATE)).start()
    h.client(EHLO)
    h.tls_started("server")
    h.client(ENVELOPE + b"STARTTLS\r\n")
    assert h.run.tls == ["server", "client"]
    plaintext = h.run.server
    h.tls_started("client")
    assert plaintext.aborted  # the server's session with that envelope is gone
    h.client(b"DATA\r\n")
    assert h.run.replies()[-1] == b"503 5.5.1 Send EHLO first: TLS started a new session"
    assert b"DATA" not in h.run.server.received
    h.client(b"MAIL FROM:<a@example.org>\r\n")
    assert h.run.replies()[-1].startswith(b"503 5.5.1")
    h.client(EHLO)
    h.tls_started("server")
    h.client(b"DATA\r\n")
    # the new session has no envelope: the fresh server refuses DATA by itself
    assert b"DATA\r\n" in h.run.server.received
    assert b"MAIL" not in h.run.server.received


def test_bytes_pipelined_after_starttls_are_never_executed() -> None:
    h = Harness(esmtp(starttls=StartTls.TERMINATE)).start()
    h.client(EHLO)
    h.tls_started("server")
    h.client(b"STARTTLS\r\n" + ENVELOPE)
    h.tls_started("client")
    assert "SG-TLS-INJECTION" in h.run.event_ids()
    assert all(b"MAIL" not in s.received for s in h.run.servers)


# -- 5. a bare LF does not end a command line ------------------------------------------


def test_bare_lf_line_is_refused_whole() -> None:
    script = b"HELO c\r\nNOOP\nMAIL FROM:<evil@x.org>\r\nQUIT\r\n"
    for cuts in ((), bytewise(script)):
        run = converse(script, cuts)
        assert b"evil" not in run.server.received and b"NOOP" not in run.server.received
        assert run.replies()[2] == b"500 5.5.2 Syntax error: bare LF in command line"
        assert run.replies()[-1] == b"221 2.0.0 Bye"


@pytest.mark.parametrize("bad", [b"NOOP\nRSET\r\n", b"NO\rOP\r\n", b"NO\x00OP\r\n"])
def test_repeated_bad_lines_drop_the_client(bad: bytes) -> None:
    script = b"HELO c\r\n" + bad * 3 + b"NOOP\r\n"
    for cuts in ((), bytewise(script)):
        run = converse(script, cuts)
        replies = run.replies()
        assert len(replies) == 5 and replies[-1].startswith(b"421 4.7.0 Repeated")
        assert run.client_closed
        assert bytes(run.server.received) == b"HELO c\r\n"


# -- 6. replies reach the client CRLF-framed, whatever the segmentation ----------------


def test_greeting_with_bare_lf_is_reframed() -> None:
    run = converse(
        b"HELO c\r\nQUIT\r\n",
        server=FakeServer(greeting=b"220 mx ESMTP\n"),
        policy=esmtp(banner=BannerPolicy.PASS),
    )
    assert bytes(run.client_out).startswith(b"220 mx ESMTP\r\n")


@dataclasses.dataclass
class LfServer(FakeServer):
    """Answers every command with LF-only line ends (multi-line EHLO too)."""

    def answer(self, line: bytes) -> bytes:
        return super().answer(line).replace(b"\r\n", b"\n")


def test_lf_only_server_replies_reach_the_client_as_crlf() -> None:
    for chunks in (0, 1):
        h = Harness(esmtp(), server_chunks=chunks)
        h.template = LfServer()
        h.start().client(EHLO + b"NOOP\r\nQUIT\r\n").client_eof()
        out = bytes(h.run.client_out)
        assert out.count(b"\n") == out.count(b"\r\n") and b"250 2.0.0 Ok\r\n" in out


@pytest.mark.parametrize("reply", [b"250 ok\rNOOP\r\n", b"250 ok\x00\r\n", b"250 ok\r\r\n"])
def test_reply_with_cr_or_nul_inside_drops_the_upstream(reply: bytes) -> None:
    h = Harness(esmtp(), auto=False).start()
    h.client(EHLO).release()
    h.client(b"NOOP\r\n")
    h.pending.clear()
    h.server_says(reply)
    assert "SG-UPSTREAM-ERROR" in h.run.event_ids()
    assert b"250 ok" not in h.run.client_out
    assert h.run.replies()[-1].startswith(b"421 4.4.2")


@pytest.mark.parametrize("cut", [None, 5000])
def test_long_reply_line_outcome_does_not_depend_on_segmentation(cut: int | None) -> None:
    h = Harness(esmtp(), auto=False).start()
    h.client(EHLO).release()
    h.client(b"NOOP\r\n")
    h.pending.clear()
    line = b"250 " + b"x" * 9994 + b"\r\n"  # 10,000 octets
    if cut is None:
        h.server_says(line)
    else:
        h.server_says(line[:cut]).server_says(line[cut:])
    assert "SG-UPSTREAM-ERROR" in h.run.event_ids()
    assert b"x" * 100 not in h.run.client_out


# -- 7. lengths are octets --------------------------------------------------------------


def test_sender_length_counts_octets() -> None:
    addr = "é" * 168 + "@x.org"  # 174 characters, 342 octets
    script = b"HELO c\r\nMAIL FROM:<" + addr.encode() + b">\r\nQUIT\r\n"
    run = converse(script)
    assert "SG-CHK-SENDER-LENGTH" in run.event_ids()
    assert b"evil" not in run.server.received and b"MAIL" not in run.server.received
    ok = converse(b"HELO c\r\nMAIL FROM:<" + ("é" * 150 + "@x.org").encode() + b">\r\nQUIT\r\n")
    assert "SG-CHK-SENDER-LENGTH" not in ok.event_ids()


def test_checks_default_is_unchanged() -> None:
    assert Checks().sender_length.limit == 320


# -- 8. unsafe combinations are refused at load time -----------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('mode = "esmtp"\nstarttls = "passthrough"\nxclient = true\n', "xclient"),
        ('mode = "esmtp"\nallowed_verbs = ["EHLO", "MAIL", "XCLIENT"]\n', "allowed_verbs"),
        ('allowed_verbs = ["HELO", "XFORWARD"]\n', "allowed_verbs"),
        ('mode = "esmtp"\nallowed_verbs = ["EHLO", "STARTTLS"]\n', "allowed_verbs"),
        ('[access]\nproxy_protocol_from = ["0.0.0.0/0"]\n', "access.proxy_protocol_from"),
    ],
)
def test_unsafe_combinations_are_refused(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    message = str(info.value)
    assert f"{path}:" in message and key in message


def test_passthrough_without_xclient_and_terminate_with_it_load(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('mode = "esmtp"\nstarttls = "passthrough"\n')
    assert load(str(path)).policy.starttls is StartTls.PASSTHROUGH
    path.write_text('[access]\nproxy_protocol_from = ["10.0.0.0/8"]\n')
    load(str(path))
