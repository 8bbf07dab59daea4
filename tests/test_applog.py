"""Application log formats."""

from __future__ import annotations

import json
import logging

import pytest

from smtpguard.applog import setup_logging


def test_json_lines_carry_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    logging.getLogger("smtpguard.gateway").info("hello %s", "x", extra={"session": "0001"})
    obj = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert obj["message"] == "hello x" and obj["session"] == "0001"
    assert obj["level"] == "info" and obj["logger"] == "smtpguard.gateway" and obj["ts"]


def test_text_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warning", "text")
    logging.getLogger("smtpguard").warning("careful")
    logging.getLogger("smtpguard").info("hidden")
    err = capsys.readouterr().err
    assert "WARNING smtpguard: careful" in err and "hidden" not in err
