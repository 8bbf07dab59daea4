"""One rule for "does this greeting look like a PIX mask", shared by probe and logscan.

The rule is Postfix's own (smtp_proto.c): the test below checks it against a real
Postfix client, greeting by greeting, and the unit tests pin the cases where probe
and logscan used to disagree (a bare ``220``, a multi-line mask, a tab).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.core.banner import looks_like_pix_mask, pix_mask
from smtpguard.core.grammar import Reply, ReplyAssembler
from smtpguard.logscan import rules
from smtpguard.probe import analyse
from tests.peers import LOOPBACK

# Greeting -> does Postfix switch on its PIX workarounds? (checked against Postfix below)
GREETINGS = {
    b"220\r\n": True,  # nothing but the code: only PIX characters
    b"220 \r\n": True,
    b"220 2000\r\n": True,
    b"220 *********0**************\r\n": True,  # the KB article's banner, one line
    b"220 ****\r\r\n": True,  # Postfix strips every CR before the LF
    b"220-*****\r\n220 ****2***\r\n": False,  # '-' of a multi-line reply is no PIX char
    b"220 **\t**\r\n": False,  # printable() makes the tab a '?'
    b"220 mx.example ESMTP Postfix\r\n": False,
    b"220 mx.example ************ ready\r\n": False,  # partly masked: not Postfix's test
}


def _reply(raw: bytes) -> Reply:
    assembler = ReplyAssembler()
    result = None
    for line in raw.split(b"\n")[:-1]:
        result = assembler.add(line + b"\n")
    assert result is not None
    return result


@pytest.mark.parametrize(("greeting", "pix"), sorted(GREETINGS.items()))
def test_rule(greeting: bytes, pix: bool) -> None:
    assert looks_like_pix_mask(greeting) is pix


@pytest.mark.parametrize(("greeting", "pix"), sorted(GREETINGS.items()))
def test_probe_and_logscan_agree(greeting: bytes, pix: bool) -> None:
    lines = [ln for ln in greeting.split(b"\n") if ln]
    logscan = rules.pix_greeting([ln.rstrip(b"\r").decode() for ln in lines])
    probe = analyse.banner_check(_reply(greeting)).data["kind"] == "pix-mask"
    assert logscan is probe is pix


def test_empty_is_not_a_greeting() -> None:
    assert not looks_like_pix_mask(b"")
    assert not looks_like_pix_mask(b"\r\n")


@given(st.text(alphabet="20 *", max_size=60))
def test_any_single_line_of_pix_characters_passes(text: str) -> None:
    assert looks_like_pix_mask(f"220 {text}\r\n".encode())


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1))
def test_our_own_pix_policy_output_passes_on_one_line(text: str) -> None:
    # The gateway's `pix` banner policy keeps code and separator, masks the rest.
    assert looks_like_pix_mask(pix_mask(f"220 {text}\r\n".encode()))


# -- the reference: a real Postfix client ---------------------------------------------


class _Greeter:
    """A loopback SMTP server that greets with ``greeting`` and accepts one message."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(4)
        self.sock.settimeout(60)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            conn.sendall(self.greeting)
            for line in _lines(conn):
                verb = line[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    for body in _lines(conn):
                        if body == b".":
                            break
                    conn.sendall(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                elif verb == b"EHLO":
                    conn.sendall(b"250-test\r\n250 8BITMIME\r\n")
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n")

    def close(self) -> None:
        self.sock.close()


def _lines(conn: socket.socket) -> Iterator[bytes]:
    buf = b""
    while True:
        while b"\r\n" not in buf:
            try:
                chunk = conn.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        yield line


@pytest.mark.e2e
def test_the_rule_is_what_postfix_does(tmp_path) -> None:
    from tests.postfix import PrivatePostfix, message

    greeters = {g: _Greeter(g) for g in GREETINGS}
    domains = {g: f"g{i}.test" for i, g in enumerate(GREETINGS)}
    transport = tmp_path / "transport"
    transport.write_text(
        "".join(f"{domains[g]} smtp:[{LOOPBACK}]:{s.port}\n" for g, s in greeters.items())
    )
    transport.chmod(0o644)
    tmp_path.chmod(0o755)
    try:
        with PrivatePostfix(
            "smtpguard-pixrule",
            default_transport="smtp",
            transport_maps=f"texthash:{transport}",
        ) as pf:
            for g in GREETINGS:
                pf.sendmail("a@example.org", [f"b@{domains[g]}"], message(f"{domains[g]}@x"))
            log = pf.wait_log(lambda t: len(re.findall(r" status=\w+", t)) >= len(GREETINGS))
    finally:
        for s in greeters.values():
            s.close()
    assert len(re.findall(r" status=sent", log)) == len(GREETINGS), log[-4000:]
    for g, server in greeters.items():
        enabled = re.compile(rf"enabling PIX workarounds: .* for \S+\[{LOOPBACK}\]:{server.port}$")
        seen = any(enabled.search(ln) for ln in log.splitlines())
        relevant = [ln for ln in log.splitlines() if "PIX" in ln or "status=" in ln]
        assert seen is GREETINGS[g] is looks_like_pix_mask(g), (g, server.port, *relevant)
