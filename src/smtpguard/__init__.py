"""smtpguard: an SMTP application-layer gateway and diagnostic toolkit.

The inspection engine lives in :mod:`smtpguard.core` and does no I/O; the asyncio
gateway in :mod:`smtpguard.gateway` drives it. ``probe``, ``logscan`` and ``sink``
are tools built on the same parsers.
"""

__version__ = "0.1.0"
