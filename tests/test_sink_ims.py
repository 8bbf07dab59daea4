"""``smtpguard sink --emulate ims``: a session that stops or is dropped inside DATA has
its partial message delivered once, and the protocol log says so; a complete message
is delivered once with no partial copy. Real sockets on loopback, the sink in-process."""

from __future__ import annotations

import asyncio
import json
import mailbox
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from smtpguard.logs import open_protocol_log
from smtpguard.sink import start_sink

DATA_TIMEOUT = 0.5
# Every wait in these tests is bounded by this.
WAIT = 10.0

MESSAGE = b"From: a@example.org\r\nSubject: %s\r\nMessage-ID: <%s@lab.test>\r\n\r\n"


async def _open_to_data(
    port: int, subject: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"220 ")
    for line, code in (
        (b"HELO client.lab.test", b"250"),
        (b"MAIL FROM:<a@example.org>", b"250"),
        (b"RCPT TO:<b@example.net>", b"250"),
        (b"DATA", b"354"),
    ):
        writer.write(line + b"\r\n")
        reply = await asyncio.wait_for(reader.readline(), WAIT)
        assert reply.startswith(code), (line, reply)
    writer.write(MESSAGE % (subject, subject) + b"first line\r\n..dot-stuffed line\r\n")
    await writer.drain()
    return reader, writer


def _run(tmp_path: Path, client: Callable[[int], Awaitable[None]]) -> tuple[list[bytes], str]:
    """Run the sink with a log, then ``client(port)``; the messages and the log."""
    maildir = tmp_path / "mail"
    log_path = tmp_path / "sink.log"

    async def main() -> None:
        plog = open_protocol_log(str(log_path), "ims")
        server, port, _ = await start_sink(
            "127.0.0.1",
            0,
            maildir,
            protocol_log=plog,  # type: ignore[arg-type]
            emulate="ims",
            data_timeout=DATA_TIMEOUT,
        )
        try:
            await asyncio.wait_for(client(port), WAIT)
            # the sink closes its side once it has delivered: wait for the log
            deadline = time.monotonic() + WAIT
            while "The connection was closed" not in _read(log_path):
                assert time.monotonic() < deadline, _read(log_path)
                await asyncio.sleep(0.02)
        finally:
            server.close()
            await server.wait_closed()
            plog.flush()

    asyncio.run(main())
    box = mailbox.Maildir(str(maildir), create=False)
    return [box.get_bytes(key) for key in sorted(box.keys())], _read(log_path)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _stalled_in_log(log: str, tmp_path: Path) -> int:
    """How many stalled DATA sessions ``smtpguard logscan`` finds in the sink's log."""
    path = tmp_path / "scanned.log"
    path.write_text(log)
    r = subprocess.run(
        [sys.executable, "-m", "smtpguard", "logscan", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode in (0, 1), r.stderr
    report = json.loads(r.stdout)
    assert report["summary"]["files"][0]["format"] == "ims", report["summary"]
    return sum(f["kind"] == "stalled_data" for f in report["findings"])


def test_client_that_stops_in_data_gets_its_partial_message_delivered(tmp_path: Path) -> None:
    async def client(port: int) -> None:
        reader, writer = await _open_to_data(port, b"stopped")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed, no reply
        assert time.monotonic() - started >= DATA_TIMEOUT * 0.9
        writer.close()

    messages, log = _run(tmp_path, client)
    assert len(messages) == 1, messages
    assert b"Message-ID: <stopped@lab.test>" in messages[0]
    assert messages[0].endswith(b"\n\nfirst line\n.dot-stuffed line\n")  # unstuffed
    assert f"no data for {DATA_TIMEOUT:g} seconds in DATA: delivered the " in log
    assert log.count("delivered the") == 1
    assert _stalled_in_log(log, tmp_path) == 1


def test_client_that_drops_in_data_gets_its_partial_message_delivered(tmp_path: Path) -> None:
    async def client(port: int) -> None:
        _, writer = await _open_to_data(port, b"dropped")
        writer.write(b"last complete line\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)  # fewer than DATA_TIMEOUT: the drop ends it, not the timer
        writer.close()
        await writer.wait_closed()

    messages, log = _run(tmp_path, client)
    assert len(messages) == 1, messages
    assert messages[0].endswith(b"first line\n.dot-stuffed line\nlast complete line\n")
    assert "the client closed the connection in DATA: delivered the " in log
    assert log.count("delivered the") == 1
    assert _stalled_in_log(log, tmp_path) == 1


def test_complete_message_is_delivered_once_without_partial_copy(tmp_path: Path) -> None:
    async def client(port: int) -> None:
        reader, writer = await _open_to_data(port, b"complete")
        writer.write(b".\r\n")
        reply = await asyncio.wait_for(reader.readline(), WAIT)
        assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
        await asyncio.sleep(DATA_TIMEOUT * 2)  # idle after the message: not in DATA
        writer.write(b"QUIT\r\n")
        assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"221")
        writer.close()

    messages, log = _run(tmp_path, client)
    assert len(messages) == 1, messages
    assert messages[0].endswith(b"first line\n.dot-stuffed line\n")
    assert "delivered the" not in log
    assert "<<< QUIT" in log and ">>> 221" in log
    assert _stalled_in_log(log, tmp_path) == 0


def test_cli_refuses_bad_input_without_a_traceback(tmp_path: Path) -> None:
    def sink(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smtpguard", "sink", "--listen", "127.0.0.1:0", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    for args, expected in (
        (["--data-timeout", "5"], "--data-timeout needs --emulate ims"),
        (["--emulate", "ims", "--data-timeout", "-1"], "expected a number of seconds > 0"),
        (["--emulate", "ims", "--data-timeout", "soon"], "expected a number of seconds"),
        (["--emulate", "exchange2019"], "invalid choice"),
        (["--log", str(tmp_path / "no" / "such" / "dir" / "x.log")], "cannot open --log"),
    ):
        r = sink(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert expected in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr


def test_the_stored_message_note_names_size_and_message_id_on_one_line() -> None:
    from smtpguard.sink.lab import message_note

    assert message_note(b"Subject: x\r\nMessage-Id:\r\n <folded@x>\r\n\r\nb\r\n") == (
        "message data: 43 bytes, Message-ID <folded@x>"
    )
    # A bare CR inside the field never splits the log entry.
    assert (
        message_note(b"Message-ID: <a\rb@c>\r\n\r\n")
        == "message data: 23 bytes, Message-ID <a?b@c>"
    )
    assert message_note(b"") == "message data: 0 bytes"
