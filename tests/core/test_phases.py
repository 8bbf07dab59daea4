"""The phase tables are the whole state machine: nothing changes a phase but them,
every trigger the code uses is in them, and the docs show them as they are."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from smtpguard.core.phases import (
    ENDING,
    FRAMING,
    HELLO,
    REPLY_TRIGGERS,
    TRANSITIONS,
    UPSTREAM,
    End,
    Ending,
    Frame,
    Framing,
    Greet,
    Hello,
    Link,
    NotInTable,
    Phase,
    Trigger,
    framing,
    hello,
    mermaid,
    next_phase,
)
from smtpguard.core.policy import Policy
from smtpguard.core.session import Session

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
    assert set(assignments("ending")) == {("session.py", "__init__"), ("session.py", "end")}
    for flag in ("closing", "draining", "client_eof"):  # the ENDING table's states now
        assert assignments(flag) == [], flag
    # FRAMING and HELLO: the old flags are gone, and every change is a table lookup.
    for flag in ("skipping", "need_hello", "cancelled_auth"):
        assert assignments(flag) == [], flag
    assert table_writes("framing") == {"framing"}
    assert table_writes("hello") == {"hello"}


def table_writes(attr: str) -> set[str]:
    """What is assigned to ``x.<attr>`` outside ``__init__``: the names of the
    functions called (a plain value would show as its type's name)."""
    values: set[str] = set()
    for path in sorted(CORE.glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef) or fn.name == "__init__":
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Assign):
                    continue
                if any(isinstance(t, ast.Attribute) and t.attr == attr for t in node.targets):
                    v = node.value
                    ok = isinstance(v, ast.Call) and isinstance(v.func, ast.Name)
                    values.add(v.func.id if ok else type(v).__name__)  # type: ignore[union-attr]
    return values


def test_a_trigger_a_state_does_not_expect_is_named() -> None:
    """As h11 does: the error names the table, the state and the trigger."""
    with pytest.raises(NotInTable, match="HELLO: TLS_STARTED is not expected in FIRST"):
        hello(Hello.FIRST, Greet.TLS_STARTED)
    with pytest.raises(NotInTable, match="FRAMING: LINE_END is not expected in LINES"):
        framing(Framing.LINES, Frame.LINE_END)
    missing = next((p, t) for p in Phase for t in Trigger if (p, t) not in TRANSITIONS)
    session = Session(Policy())
    session.phase = missing[0]
    with pytest.raises(NotInTable, match=f"TRANSITIONS: {missing[1].name} is not expected"):
        session.goto(missing[1])
    assert hello(Hello.ANY, Greet.TLS_STARTED) is Hello.FIRST
    assert hello(Hello.FIRST, Greet.ACCEPTED) is Hello.ANY
    assert framing(framing(Framing.LINES, Frame.TOO_LONG), Frame.LINE_END) is Framing.LINES


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
    for table, trig in ((FRAMING, Frame), (HELLO, Greet)):
        assert {t for _, t in table} == set(trig)  # type: ignore[attr-defined]
    ends = {t.name for _, t in ENDING}
    assert used("End") <= ends
    assert ends == {t.name for t in End}


def test_the_ending_table_is_total() -> None:
    """Every (state, trigger) pair is drawn: EOF, shutdown and closing combine as the
    three flags they replace did, and CLOSING is never left."""
    assert set(ENDING) == {(e, t) for e in Ending for t in End}
    assert ENDING[(Ending.CLOSING, End.SHUTDOWN)] is Ending.CLOSING
    assert all(ENDING[(e, End.CLOSE)].name.startswith("CLOSING") for e in Ending)


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
        "```mermaid\n" + mermaid(UPSTREAM.items()) + "\n```\n\n"
        "How the session reads the client's next byte as it ends, `ENDING` (EOF, a\n"
        "shutdown, closing once every owed reply is flushed), a second table beside\n"
        "the phase:\n\n"
        "```mermaid\n" + mermaid(ENDING.items()) + "\n```\n\n"
        "Inside the command phases the command part reads the next line by two more:\n"
        "`FRAMING` (a line, or the rest of an over-long one being skipped) and `HELLO`\n"
        "(any command, or EHLO/HELO first after TLS):\n\n"
        "```mermaid\n" + mermaid(FRAMING.items()) + "\n```\n\n"
        "```mermaid\n" + mermaid(HELLO.items()) + "\n```"
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
