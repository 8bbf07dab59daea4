"""Application logs: JSON lines and text lines on stderr, levels, extra fields."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from smtpguard.applog import setup_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    ours, root = logging.getLogger("smtpguard"), logging.getLogger()
    saved = (ours.handlers[:], ours.level, ours.propagate, root.handlers[:], root.level)
    yield
    ours.handlers[:], ours.level, ours.propagate = saved[0], saved[1], saved[2]
    root.handlers[:], root.level = saved[3], saved[4]


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_line_fields() -> None:
    out = io.StringIO()
    setup_logging("info", "json", out)
    logging.getLogger("smtpguard.gateway").info(
        "session %s refused",
        "0007",
        extra={"session": "0007", "peer": ("192.0.2.1", 4242), "event": "SG-ACCESS-DENIED"},
    )
    [line] = _lines(out)
    obj = json.loads(line)
    assert obj["message"] == "session 0007 refused"
    assert obj["level"] == "info" and obj["logger"] == "smtpguard.gateway"
    assert obj["ts"].endswith("+00:00") and "T" in obj["ts"]
    assert obj["pid"] == os.getpid()
    assert obj["session"] == "0007" and obj["event"] == "SG-ACCESS-DENIED"
    assert obj["peer"] == ["192.0.2.1", 4242]


def test_json_exception_and_unserialisable_extra() -> None:
    out = io.StringIO()
    setup_logging("info", "json", out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("smtpguard").exception("failed", extra={"obj": object()})
    obj = json.loads(_lines(out)[0])
    assert "RuntimeError: boom" in obj["exception"] and obj["obj"].startswith("<object")
    assert len(_lines(out)) == 1  # the traceback stays inside the one JSON line


def test_text_line_with_extra_fields() -> None:
    out = io.StringIO()
    setup_logging("warning", "text", out)
    log = logging.getLogger("smtpguard.gateway")
    log.info("hidden")
    log.warning("upstream lost", extra={"session": "0003", "peer": "192.0.2.1:4242"})
    [line] = _lines(out)
    assert "WARNING smtpguard.gateway: upstream lost session=0003 peer=192.0.2.1:4242" in line


def test_levels_and_other_libraries() -> None:
    out = io.StringIO()
    setup_logging("debug", "json", out)
    logging.getLogger("smtpguard.core").debug("ours at debug")
    logging.getLogger("asyncio").info("theirs at info: not shown")
    logging.getLogger("asyncio").error("theirs at error")
    names = [json.loads(x)["logger"] for x in _lines(out)]
    assert names == ["smtpguard.core", "asyncio"]  # one format for everything


def test_calling_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "text", first)
    setup_logging("info", "json", second)
    logging.getLogger("smtpguard").info("once")
    assert first.getvalue() == "" and len(_lines(second)) == 1


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    logging.getLogger("smtpguard").info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == "" and json.loads(captured.err)["message"] == "to stderr"


@pytest.mark.parametrize(("level", "fmt"), [("loud", "text"), ("info", "xml")])
def test_bad_values_are_named(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match=r"loud|xml"):
        setup_logging(level, fmt)
