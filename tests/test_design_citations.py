"""Every reference to the behaviour spec names a section of docs/design.md (issue 25).

Code, tests and documents cite the spec as ``docs/design.md#anchor`` (or, in the
documents next to it, ``design.md#anchor``). The anchor is a heading's GitHub slug.
The old citations, a section number of a spec kept outside the repository, are gone.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DESIGN = REPO / "docs" / "design.md"
SEARCHED = ("src", "tests", "bench", "docs", "README.md")
CITATION = re.compile(r"design\.md#([A-Za-z0-9_-]+)")
OLD_FORM = re.compile("DESIGN " + "\u00a7")  # split: this file must not match itself


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors() -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


def searched_files() -> list[Path]:
    files: list[Path] = []
    for name in SEARCHED:
        path = REPO / name
        if path.is_file():
            files.append(path)
        else:
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix in (".py", ".md", ".toml", ".txt", ".rst")
            )
    return [p for p in files if p != Path(__file__).resolve()]  # its examples are not citations


def test_slug_is_githubs() -> None:
    assert slug("Reading as the peers read") == "reading-as-the-peers-read"
    assert slug("TLS and deployment") == "tls-and-deployment"
    assert slug("Design: what smtpguard does, and why") == "design-what-smtpguard-does-and-why"


def test_the_spec_has_its_sections() -> None:
    assert {"architecture", "session", "banner", "data", "framing", "shared-state"} <= anchors()


def test_every_citation_names_a_section() -> None:
    known = anchors()
    wrong = []
    cited = 0
    for path in searched_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                cited += 1
                if m.group(1) not in known:
                    wrong.append(f"{path.relative_to(REPO)}:{number}: #{m.group(1)}")
    assert wrong == [], f"not a heading of docs/design.md: {wrong}"
    assert cited > 0


def test_no_citation_of_the_old_spec() -> None:
    old = [
        f"{path.relative_to(REPO)}:{number}"
        for path in searched_files()
        for number, line in enumerate(
            path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        )
        if OLD_FORM.search(line)
    ]
    assert old == []
