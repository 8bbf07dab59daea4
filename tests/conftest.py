"""Settings for the whole suite.

Hypothesis's default 200 ms deadline per example is a timed assertion: on a loaded
machine (CI shares its cores) a correct example can exceed it and fail the run. The
suite's properties are about behaviour, never about speed, so no example has one.

The embedded state store's default directory is per user (``$XDG_STATE_HOME``, or
/var/lib/smtpguard for root): the suite points it at a directory of its own, so a
gateway a test starts never writes the host's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings

_STATE_HOME = tempfile.mkdtemp(prefix="smtpguard-test-state-")
os.environ["XDG_STATE_HOME"] = _STATE_HOME
os.environ.pop("STATE_DIRECTORY", None)
atexit.register(shutil.rmtree, _STATE_HOME, ignore_errors=True)

# too_slow: the same clock, measured on generating the inputs.
settings.register_profile("smtpguard", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("smtpguard")
