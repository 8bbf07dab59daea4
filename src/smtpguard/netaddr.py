"""``HOST:PORT``: the one parser, for flags, the config file, the metrics listener and
the probe's target, with errors that say what is wrong."""

from __future__ import annotations

from smtpguard.core.grammar import ascii_number
from smtpguard.errors import CliError


def split_hostport(
    text: str, *, default_host: str | None = None, default_port: int | None = None
) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` (with ``default_host``), and with
    ``default_port`` also ``HOST``, ``[V6]`` or a bare IPv6 address. ValueError says
    what is wrong."""
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end >= 0 else ""
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [ADDRESS]:PORT, got {text!r}")
        host, port = text[1:end], rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text and default_port is None:  # an IPv6 address needs its brackets
        host, _, port = text.rpartition(":")
    if not port:
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return _host(host, text, default_host), default_port
    if not 0 <= ascii_number(port) <= 65535:
        raise ValueError(f"port must be a number 0-65535, got {port!r}")
    return _host(host, text, default_host), int(port)


def _host(host: str, text: str, default: str | None) -> str:
    if host:
        return host
    if default is None:
        raise ValueError(f"no host in {text!r}")
    return default


def parse_hostport(text: str, flag: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """:func:`split_hostport` for a command-line flag: CliError naming ``flag``."""
    try:
        return split_hostport(text, default_host=default_host)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None
