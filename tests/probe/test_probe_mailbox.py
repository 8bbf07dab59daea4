"""Reading the target's mailbox: Maildir, a directory of message files, an mbox."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from smtpguard.probe.mailbox import Mailbox, MailboxError, message_id

pytestmark = pytest.mark.standalone


def msg(mid: str, body: str = "hello") -> bytes:
    return f"From: a@example.org\nMessage-ID: <{mid}>\nSubject: s\n\n{body}\n".encode()


def test_message_id_only_from_the_header_section() -> None:
    assert message_id(msg("a@x")) == "a@x"
    assert message_id(b"Subject: s\r\n\r\nMessage-ID: <body@x>\r\n") is None
    assert message_id(b"message-id:   <lower@x>\r\n\r\n") == "lower@x"


def test_maildir_new_and_cur(tmp_path: Path) -> None:
    md = mailbox.Maildir(tmp_path / "md", create=True)
    md.add(msg("one@x"))
    box = Mailbox(tmp_path / "md", "maildir")
    box.check()
    assert set(box.messages) == {"one@x"}
    key = md.add(msg("two@x"))
    # a reader moves it to cur/ with flags: it must still be found once
    m = md.get_message(key)
    m.set_subdir("cur")
    m.add_flag("S")
    md[key] = m
    box.scan()
    assert set(box.messages) == {"one@x", "two@x"}


def test_plain_directory_of_files(tmp_path: Path) -> None:
    (tmp_path / "m.1").write_bytes(b"X-Client-Addr: 127.0.0.1\r\n" + msg("dump@x"))
    box = Mailbox(tmp_path, "maildir")
    box.scan()
    assert box.messages["dump@x"].endswith(b"hello\n")


def test_mbox_read_on_and_last_message_reparsed(tmp_path: Path) -> None:
    path = tmp_path / "mailbox"
    box = Mailbox(path, "mbox")
    box.check()  # not there yet: fine, its directory exists
    with path.open("ab") as f:
        f.write(b"From a@example.org Thu Jan  1 00:00:00 2026\n" + msg("first@x"))
        f.write(b"\nFrom a@example.org Thu Jan  1 00:00:00 2026\n" + msg("second@x", "part"))
    box.scan()
    assert box.messages["second@x"].endswith(b"part\n")
    with path.open("ab") as f:  # the rest of the second message arrives
        f.write(b"and the rest\n\n")
    box.scan()
    assert set(box.messages) == {"first@x", "second@x"}
    assert b"and the rest" in box.messages["second@x"]
    assert b"second@x" not in box.messages["first@x"]


def test_unreadable_mailboxes_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(MailboxError, match="not a directory"):
        Mailbox(tmp_path / "nope", "maildir").check()
    with pytest.raises(MailboxError, match="no such file"):
        Mailbox(tmp_path / "nope" / "mbox", "mbox").check()
