"""Build hook: compile the inspection core and the connection shell with mypyc.

Everything else about the package is in pyproject.toml. The core is strictly typed
Python with no I/O; mypyc turns those modules (and the shell's per-session code:
connection.py, upstreamconn.py and handoff.py, the per-event path; server.py,
admitting and releasing sessions and opening upstreams; the metrics hooks; logs.py,
the protocol log's per-line path) into C extensions: the gateway then needs about
40 % less CPU per message (bench/README.md). The ``.py`` files ship too, for reading
the source.

Without a C compiler or Python's headers, or with ``SMTPGUARD_PURE_PYTHON=1`` (use
it for editable installs you edit: an in-place build leaves ``.so`` files beside the
sources that shadow them), the package is built as pure Python: same behaviour,
slower. ``smtpguard --version`` says which one is installed.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

COMPILED = [
    *sorted(str(p) for p in Path("src/smtpguard/core").glob("*.py")),
    "src/smtpguard/gateway/connection.py",
    "src/smtpguard/gateway/flow.py",
    "src/smtpguard/gateway/handoff.py",
    "src/smtpguard/gateway/metrics.py",
    "src/smtpguard/gateway/metrics_prom.py",
    "src/smtpguard/gateway/proxyreader.py",
    "src/smtpguard/gateway/server.py",
    "src/smtpguard/gateway/upstreamconn.py",
    "src/smtpguard/gateway/upstreams.py",
    "src/smtpguard/logs.py",
]


def why_pure() -> str | None:
    """Why the build must stay pure Python, or None if it can compile."""
    if os.environ.get("SMTPGUARD_PURE_PYTHON", "") not in ("", "0"):
        return "SMTPGUARD_PURE_PYTHON is set"
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} is not CPython"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").is_file():
        return f"no Python headers in {include}"
    return None


reason = why_pure()
if reason is None:
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3", group_name="smtpguard")
else:
    print(f"smtpguard: building pure Python ({reason})", file=sys.stderr)
    ext_modules = []

setup(ext_modules=ext_modules)
