"""Application logging on stderr: human text lines or JSON lines.

``setup_logging`` gives the ``smtpguard`` logger hierarchy one stderr handler at the
chosen level. Other libraries' records (asyncio's "Task exception was never
retrieved", aiosmtpd) go through the same formatter at WARNING and above, so stderr
is in one format and a log shipper never meets a stray line.

JSON lines carry ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
``pid`` (which worker) and any extra fields a caller passes
(``extra={"session": ..., "peer": ..., "event": ...}``), so they can be indexed
without parsing prose. Text lines append the same extra fields as ``key=value``.
The application log is about the gateway's own life (start, reload, drain, errors);
the SMTP dialogue goes to the protocol log (``smtpguard.logs``).

Lines of that life an operator must always see (draining, stopped, the logs
re-opened: :data:`LIFECYCLE`) are shown whatever the level: in text as the bare
``smtpguard: ...`` lines a terminal expects, in JSON as any other line, with their
``event`` ID (docs/events.md).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import sys
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error", "critical")


class LogFormat(enum.StrEnum):
    """``gateway.log_format``: how the application log on stderr is written."""

    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    """``gateway.log_level``: the levels an operator may choose."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


FORMATS = tuple(LogFormat)
LOGGER = "smtpguard"
LIFECYCLE = "smtpguard.lifecycle"  # always shown: the process's own life

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in extra_fields(record).items():
            obj.setdefault(key, value)  # an extra field never hides a standard one
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = extra_fields(record)
        if not extra:
            return line
        first, nl, rest = line.partition("\n")  # keep a traceback below the fields
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        return f"{first} {fields}{nl}{rest}"


class LifecycleTextFormatter(logging.Formatter):
    """``smtpguard: MESSAGE``: the fields are in the message already."""

    def format(self, record: logging.LogRecord) -> str:
        return f"smtpguard: {record.getMessage()}"


def lifecycle_record(event: str, message: str, **fields: object) -> logging.LogRecord:
    """A record of the process's life (``event``: its ID), as :func:`lifecycle` logs it."""
    return logging.getLogger(LIFECYCLE).makeRecord(
        LIFECYCLE, logging.INFO, "", 0, "%s", (message,), None, extra={"event": event, **fields}
    )


def lifecycle(event: str, message: str, **fields: object) -> None:
    """Log one line of the process's life, shown at any level (see the module doc)."""
    logger = logging.getLogger(LIFECYCLE)
    logger.handle(lifecycle_record(event, message, **fields))


def setup_logging(level: str = "warning", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log ``smtpguard.*`` at ``level`` to stderr as ``fmt`` ("text" or "json").

    Safe to call again (reload): the handler is replaced, never added twice.
    Raises ``ValueError`` naming the bad value.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == LogFormat.JSON else TextFormatter())
    ours = logging.getLogger(LOGGER)
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False
    life = logging.StreamHandler(stream if stream is not None else sys.stderr)
    life.setFormatter(JsonFormatter() if fmt == LogFormat.JSON else LifecycleTextFormatter())
    lifecycle_logger = logging.getLogger(LIFECYCLE)
    lifecycle_logger.handlers[:] = [life]
    lifecycle_logger.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
