"""``smtpguard logscan FILE…``: argument parsing and exit codes, no scanning logic.

Exit status: 0 nothing found, 1 findings, 2 an input could not be read (or a usage
error). Other inputs are still scanned when one of them is unreadable.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from smtpguard.errors import CliError

# Show a progress bar only for inputs at least this big (and only on a terminal).
PROGRESS_MIN_BYTES = 64 * 1024 * 1024
FORMATS = ("auto", "ims", "iis", "exchange", "msgtrk", "postfix", "exim", "zeek", "jsonl")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "logscan",
        help="find stalled end-of-data, duplicate deliveries and SMTP filtering in logs",
        description=(
            "Read SMTP logs (Exchange IMS, IIS W3C, Exchange 2007+ protocol and message "
            "tracking logs, Postfix, Exim, Zeek, smtpguard ims/jsonl), plain, .gz or '-' "
            "for stdin, and report stalled DATA, duplicate deliveries, EHLO rejected with "
            "500, commands a PIX rewrote, masked banners and Postfix PIX work-arounds. "
            "Give smtpguard's jsonl protocol log with the server's log behind it to have "
            "the gateway's own refusals, suppressed copies and slow servers told apart "
            "from stalls."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="log file, .gz, or - for stdin")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="log format (default: detect from content)",
    )
    p.add_argument("--json", action="store_true", help="print findings and summary as JSON")
    p.add_argument("--html", metavar="REPORT.html", help="write a self-contained HTML report")
    p.add_argument("--since", metavar="TIME", help="ignore findings before this ISO time")
    p.add_argument("--until", metavar="TIME", help="ignore findings after this ISO time")
    p.add_argument(
        "--window",
        metavar="DURATION",
        default="24h",
        help="duplicate window, e.g. 30m, 2h, 1d (default 24h)",
    )
    p.add_argument(
        "--year",
        type=int,
        metavar="YYYY",
        help="year for syslog stamps without one (default: current year)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The scanner, its parsers and rich are imported when logscan runs, here and below:
    # every command's parser is built at start-up, and the gateway needs none of them.
    from . import report_json, report_text
    from .correlate import gateway_first
    from .scan import Options, Scanner
    from .source import InputError, Source
    from .timefmt import parse_duration, parse_user_time

    try:
        options = Options(
            format=args.format,
            since=parse_user_time(args.since) if args.since else None,
            until=parse_user_time(args.until) if args.until else None,
            window=parse_duration(args.window),
            year=args.year,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.files.count("-") > 1:
        raise CliError("'-' (stdin) can be given only once")

    progress = _Progress.maybe(args.files)
    scanner = Scanner(options, on_progress=progress.update if progress else None)
    errors: list[str] = []
    try:
        for name in gateway_first(args.files):  # a server log is then read knowingly
            try:
                src = Source(name)
            except InputError as exc:
                _error(errors, str(exc))
                continue
            if progress:
                progress.start(src)
            try:
                scanner.scan(src)
            except InputError as exc:
                _error(errors, str(exc))
            finally:
                src.close()
    finally:
        if progress:
            progress.stop()
    result = scanner.finish()
    result.errors.extend(errors)
    hints = _year_hints(result, args.year)

    if args.json:
        report_json.render(result, sys.stdout)
        for hint in hints:
            print(f"smtpguard logscan: hint: {hint}", file=sys.stderr)
    else:
        from rich.console import Console

        report_text.render(result, Console(), hints)
    if args.html:
        from .report_html import write

        try:
            write(result, Path(args.html), hints)
        except OSError as exc:
            raise CliError(f"cannot write {args.html}: {exc.strerror or exc}") from None
    if errors:
        return 2
    return 1 if result.counts else 0


def _year_hints(result: Any, year: int | None) -> list[str]:
    """A hint per input whose stamps carry no year (timefmt.year_hint)."""
    from .timefmt import year_hint

    now = datetime.now()
    hints = []
    for st in result.files:
        modified = None
        if st.yearless_latest is not None and st.file != "<stdin>":
            with contextlib.suppress(OSError, ValueError, OverflowError):
                modified = datetime.fromtimestamp(Path(st.file).stat().st_mtime)
        hint = year_hint(st.file, st.yearless_latest, year, now, modified)
        if hint is not None:
            hints.append(hint)
    return hints


def _error(errors: list[str], message: str) -> None:
    errors.append(message)
    print(f"smtpguard logscan: error: {message}", file=sys.stderr)


class _Progress:
    """A rich progress bar on stderr, for big inputs on a terminal only."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("scanning", total=total)
        self._done = 0
        self._progress.start()

    @classmethod
    def maybe(cls, files: list[str]) -> _Progress | None:
        if not sys.stderr.isatty():
            return None
        total = 0
        for name in files:
            with contextlib.suppress(OSError):
                total += Path(name).stat().st_size if name != "-" else 0
        return cls(total) if total >= PROGRESS_MIN_BYTES else None

    def start(self, src: Any) -> None:
        self._base = self._done
        self._progress.update(self._task, description=f"scanning {src.display}")

    def update(self, position: int) -> None:
        self._done = self._base + position
        self._progress.update(self._task, completed=self._done)

    def stop(self) -> None:
        self._progress.stop()
