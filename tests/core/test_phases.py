"""The phase tables are the whole state machine: nothing changes a phase but them,
every trigger the code uses is in them, and the docs show them as they are."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from smtpguard.core.phases import (
    REPLY_TRIGGERS,
    TRANSITIONS,
    UPSTREAM,
    Link,
    Phase,
    Trigger,
    mermaid,
    next_phase,
)

ROOT = Path(__file__).parents[2]
CORE = ROOT / "src" / "smtpguard" / "core"


def assignments(attr: str) -> list[tuple[str, str]]:
    """(file, function) of every ``x.<attr> = …`` in the core."""
    found = []
    for path in sorted(CORE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                targets = node.targets if isinstance(node, ast.Assign) else []
                if isinstance(node, ast.AnnAssign | ast.AugAssign):
                    targets = [node.target]
                for t in targets:
                    for sub in ast.walk(t):
                        if isinstance(sub, ast.Attribute) and sub.attr == attr:
                            found.append((path.name, fn.name))
    return found


def test_only_the_tables_change_a_phase() -> None:
    assert set(assignments("phase")) == {("session.py", "__init__"), ("session.py", "goto")}
    assert set(assignments("state")) == {("upstream.py", "__init__"), ("upstream.py", "move")}


def used(enum_name: str) -> set[str]:
    names: set[str] = set()
    for path in CORE.glob("*.py"):
        if path.name == "phases.py":
            continue
        names |= set(re.findall(rf"\b{enum_name}\.([A-Z_0-9]+)\b", path.read_text()))
    return names


def test_every_trigger_the_code_uses_is_in_the_table() -> None:
    in_table = {t.name for _, t in TRANSITIONS}
    assert used("Trigger") | {t.name for t in REPLY_TRIGGERS.values()} <= in_table
    assert in_table == {t.name for t in Trigger}  # and none is dead
    links = {t.name for _, t in UPSTREAM}
    assert used("Link") <= links
    assert links == {t.name for t in Link}


def test_every_phase_can_be_left_and_reached() -> None:
    sources = {p for p, _ in TRANSITIONS}
    targets = set(TRANSITIONS.values())
    assert sources == set(Phase) - {Phase.CLOSED}
    assert targets | {Phase.COMMAND} == set(Phase)


def test_a_pair_not_in_the_table_fails_loudly() -> None:
    with pytest.raises(KeyError):
        next_phase(Phase.CLOSED, Trigger.HOLD)
    with pytest.raises(KeyError):
        next_phase(Phase.TUNNEL, Trigger.END_OF_DATA)


def tables() -> str:
    rows = "\n".join(
        f"| `{src.name}` | {trig.value} | `{dst.name}` |"
        for (src, trig), dst in TRANSITIONS.items()
        if trig is not Trigger.CLOSE
    )
    return (
        "| from | trigger | to |\n|---|---|---|\n" + rows + "\n\n"
        "```mermaid\n" + mermaid(TRANSITIONS.items()) + "\n```\n\n"
        "The upstream connection's life cycle, `UPSTREAM`, works the same way:\n\n"
        "```mermaid\n" + mermaid(UPSTREAM.items()) + "\n```"
    )


def test_the_architecture_doc_shows_the_tables_as_they_are() -> None:
    """Set SMTPGUARD_WRITE_DOCS=1 to rewrite the section from the tables."""
    path = ROOT / "docs" / "architecture.md"
    doc = path.read_text()
    begin, end = "<!-- tables: begin -->", "<!-- tables: end -->"
    head, _, rest = doc.partition(begin)
    shown, _, tail = rest.partition(end)
    if os.environ.get("SMTPGUARD_WRITE_DOCS") == "1":
        path.write_text(f"{head}{begin}\n{tables()}\n{end}{tail}")
    assert shown.strip() == tables(), "docs/architecture.md is out of date"


def test_the_core_is_composed_not_inherited() -> None:
    """No core class derives from another core class; none has more than 30 methods."""
    classes: dict[str, ast.ClassDef] = {}
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = node
    for name, node in classes.items():
        bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
        assert not bases & set(classes), f"{name} derives from {bases & set(classes)}"
        methods = [n for n in node.body if isinstance(n, ast.FunctionDef)]
        assert len(methods) <= 30, f"{name} has {len(methods)} methods"
