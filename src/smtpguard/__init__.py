"""smtpguard: an SMTP application-layer gateway and diagnostic toolkit.

The inspection engine lives in :mod:`smtpguard.core` and does no I/O; the asyncio
gateway in :mod:`smtpguard.gateway` drives it. ``probe``, ``logscan`` and ``sink``
are tools built on the same parsers.
"""

__version__ = "0.1.0"


def core_build() -> str:
    """How the inspection core is installed: compiled by mypyc or pure Python."""
    # Imported on call: ``import smtpguard`` (for __version__) does not load the core.
    from smtpguard.core import session

    return "compiled" if not session.__file__.endswith(".py") else "pure Python"
