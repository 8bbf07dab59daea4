"""smtpguard probe: diagnose an SMTP path for Mailguard-style filtering.

Public API: :func:`run_probe` takes :class:`ProbeOptions` and returns a
:class:`ProbeReport` (raises :class:`ConnectFailed` if the target is unreachable).
"""

from smtpguard.probe.client import ConnectFailed
from smtpguard.probe.model import Check, Outcome, ProbeOptions, ProbeReport, Verdict
from smtpguard.probe.runner import run_probe

__all__ = [
    "Check",
    "ConnectFailed",
    "Outcome",
    "ProbeOptions",
    "ProbeReport",
    "Verdict",
    "run_probe",
]
