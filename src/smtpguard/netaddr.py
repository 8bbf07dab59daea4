"""``HOST:PORT`` parsing for command-line flags, with errors that name the flag."""

from __future__ import annotations


def parse_hostport(text: str, flag: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT``; raise CliError naming ``flag``."""
    from smtpguard.cli import CliError

    host, sep, port = text.rpartition(":")
    if not sep:
        raise CliError(f"{flag}: expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CliError(f"{flag}: port must be a number 0-65535, got {port!r}")
    return host, int(port)
