"""No core part imports the session: a part is fed what it needs and returns a
decision; only ``Session`` applies it (issue 25). Read from the AST, so an import
counts wherever it stands: at the top, inside a function, or under
``if TYPE_CHECKING:``."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).parents[2] / "src" / "smtpguard" / "core"
SESSION = "smtpguard.core.session"

# Parts not yet rewritten to return decisions (issue 25, item 1): they still hold
# the session. The set must shrink to empty; the test fails if it is out of date.
STILL_HOLD_THE_SESSION: set[str] = set()


def imports_session(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name == SESSION or a.name.startswith(SESSION + ".") for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == SESSION:
                return True
            if node.module == "smtpguard.core" and any(a.name == "session" for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and (
            node.module == "session" or any(a.name == "session" for a in node.names)
        ):
            return True  # relative: from .session / from . import session
    return False


def offenders() -> set[str]:
    return {
        path.name
        for path in sorted(CORE.glob("*.py"))
        if path.name != "session.py" and imports_session(ast.parse(path.read_text()))
    }


def test_no_core_part_imports_the_session() -> None:
    assert offenders() == STILL_HOLD_THE_SESSION


def test_the_check_sees_every_kind_of_import() -> None:
    for src in (
        "from smtpguard.core.session import Session",
        "import smtpguard.core.session",
        "from smtpguard.core import session",
        "from .session import Session",
        "from . import session",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from smtpguard.core.session import Session",
        "def f():\n    from smtpguard.core.session import Session",
    ):
        assert imports_session(ast.parse(src)), src
    assert not imports_session(ast.parse("from smtpguard.core.pipeline import Slot"))
