"""``--json``: ``{"findings": [...], "summary": {...}}``, findings with seven keys."""

from __future__ import annotations

import json
from typing import TextIO

from .scan import Result


def render(result: Result, out: TextIO) -> None:
    doc = {
        "findings": [f.as_json() for f in result.findings],
        "summary": result.summary(),
    }
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")
