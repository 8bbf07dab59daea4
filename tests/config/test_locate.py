"""The key-to-line helper: every TOML way of writing a key, and a property test over
generated documents in several styles."""

from __future__ import annotations

import json
import tomllib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from smtpguard.config.locate import find_line, key_lines

DOC = """\
# a comment with key = "value" and [table]
mode = "esmtp"   # trailing comment
title = "a [fake] header = here"
multi = \"\"\"
fake = 1
[not.a.table]
\"\"\"
literal = '''
also = "not a key"
'''

[checks.rcpt_count]
action = "reject"
limit = "lots"

[checks]
special_characters = "log"
header_size.limit = 5
body_line_length = { action = "log", limit = 7 }
"quoted key".limit = 9

[access]
deny = [
  "10.0.0.0/8",   # comment, with a comma
  "bad",
]
allow = ["a", "b"]

[[servers]]
name = "one"
[[servers]]
name = "two"
"""


def test_tomllib_accepts_the_sample() -> None:
    tomllib.loads(DOC)


def test_lines_of_every_key_form() -> None:
    want = {
        ("mode",): 2,
        ("title",): 3,
        ("multi",): 4,
        ("literal",): 8,
        ("checks", "rcpt_count"): 12,
        ("checks", "rcpt_count", "limit"): 14,
        ("checks",): 12,  # first mention: the [checks.rcpt_count] header
        ("checks", "special_characters"): 17,
        ("checks", "header_size", "limit"): 18,
        ("checks", "body_line_length", "limit"): 19,
        ("checks", "quoted key", "limit"): 20,
        ("access", "deny"): 23,
        ("access", "deny", 0): 24,
        ("access", "deny", 1): 25,
        ("access", "allow", 1): 27,
        ("servers", 1, "name"): 32,
    }
    lines = key_lines(DOC)
    for path, line in want.items():
        assert lines.get(path) == line, path
    assert ("fake",) not in lines and ("also",) not in lines
    assert ("not", "a", "table") not in lines


def test_find_line_falls_back_to_the_enclosing_key() -> None:
    assert find_line(DOC, ("checks", "rcpt_count", "rate")) == 12
    assert find_line(DOC, ("checks", "body_line_length", "action")) == 19
    assert find_line(DOC, ("timeouts", "connect")) is None


# -- property: generated documents ------------------------------------------------------------

keys = st.text("abcdefghij_-", min_size=1, max_size=6) | st.sampled_from(["a b", 'q"x', "é"])
scalars = (
    st.integers(-5, 10**6)
    | st.booleans()
    | st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
    | st.just('fake = "x"\n[table]')
)
leaf_values = scalars | st.lists(scalars, max_size=3)
tables = st.recursive(
    st.dictionaries(keys, leaf_values, min_size=1, max_size=4),
    lambda inner: st.dictionaries(keys, inner | leaf_values, min_size=1, max_size=3),
    max_leaves=12,
)


def _key(k: str) -> str:
    bare = k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k)
    return k if bare else json.dumps(k)


def _value(v: Any, multiline_arrays: bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    sep = ",\n  " if multiline_arrays else ", "
    inner = sep.join(_value(x, False) for x in v)
    return f"[\n  {inner},\n]" if multiline_arrays and v else f"[{inner}]"


def _dump(data: dict[str, Any], style: str) -> str:
    out: list[str] = []

    def table(path: list[str], d: dict[str, Any]) -> None:
        leaves = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if path and (leaves or style != "multiline"):
            out.append("[" + ".".join(_key(p) for p in path) + "]")
        for k, v in leaves.items():
            out.append(f"{_key(k)} = {_value(v, style == 'multiline')}  # c = 1")
        if style == "inline" and path:
            for k, v in subs.items():
                out.append(f"{_key(k)} = {_inline(v)}")
            return
        for k, v in subs.items():
            table([*path, k], v)

    table([], data)
    return "\n".join(out) + "\n"


def _inline(d: dict[str, Any]) -> str:
    parts = [
        f"{_key(k)} = {_inline(v) if isinstance(v, dict) else _value(v, False)}"
        for k, v in d.items()
    ]
    return "{ " + ", ".join(parts) + " }"


def _leaves(d: dict[str, Any], path: tuple[str | int, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for k, v in d.items():
        p = (*path, k)
        if isinstance(v, dict):
            out += _leaves(v, p)
        else:
            out.append(p)
            if isinstance(v, list):
                out += [(*p, i) for i in range(len(v))]
    return out


@given(tables, st.sampled_from(["headers", "multiline", "inline"]))
def test_every_generated_key_is_found_on_its_line(data: dict[str, Any], style: str) -> None:
    text = _dump(data, style)
    assert tomllib.loads(text) == data
    lines = text.splitlines()
    for path in _leaves(data):
        line = find_line(text, path)
        assert line is not None, (path, text)
        src = lines[line - 1]
        last_key = next(p for p in reversed(path) if isinstance(p, str))
        if isinstance(path[-1], int):
            value = data
            for p in path:
                value = value[p]
            assert _value(value, False) in src, (path, src)
        else:
            assert _key(last_key) + " = " in src, (path, src)
