"""The package build: setup.py compiles the core with mypyc, or builds pure Python
when asked to (or when it cannot compile). The compiled build is what .ci/run
installs and checks (``smtpguard --version`` must say ``core: compiled``); this
covers the fallback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_pure_python_build_has_no_extension_modules(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    out = tmp_path / "wheels"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-v",  # shows the build backend's own lines
            "--wheel-dir",
            str(out),
            str(src),
        ],
        env={**os.environ, "SMTPGUARD_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "building pure Python (SMTPGUARD_PURE_PYTHON is set)" in r.stderr + r.stdout
    (wheel,) = out.glob("smtpguard-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")  # no platform tag: nothing compiled
    names = zipfile.ZipFile(wheel).namelist()
    assert "smtpguard/core/session.py" in names
    assert not [n for n in names if n.endswith(".so")]
