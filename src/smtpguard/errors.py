"""The errors every layer may raise to the user: a leaf module, importing nothing of
the project, so that any module can import it at its top (a function-local import
of an error class is a cycle in hiding)."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class ConfigError(Exception):
    """An invalid configuration; ``str()`` is the message for the user, one line per
    problem (``lines``)."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
