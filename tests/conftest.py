"""Settings for the whole suite.

Hypothesis's default 200 ms deadline per example is a timed assertion: on a loaded
machine (CI shares its cores) a correct example can exceed it and fail the run. The
suite's properties are about behaviour, never about speed, so no example has one.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# too_slow: the same clock, measured on generating the inputs.
settings.register_profile("smtpguard", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("smtpguard")
