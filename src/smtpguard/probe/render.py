"""Output of a probe report: a rich table for people, one JSON object for machines."""

from __future__ import annotations

import json
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from smtpguard.probe.model import Delivered, Outcome, ProbeReport, Verdict

_STYLE = {
    Verdict.OK: "green",
    Verdict.PROBLEM: "bold red",
    Verdict.INFO: "cyan",
    Verdict.SKIPPED: "dim",
}


def render_json(report: ProbeReport, out: TextIO) -> None:
    json.dump(report.to_json(), out, indent=2, ensure_ascii=False)
    out.write("\n")


def render_error_json(target: str, error: str, out: TextIO) -> None:
    """What ``--json`` prints when there is no report (exit status 2)."""
    doc = {"target": target, "verdict": "error", "error": error}
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")


def render_table(report: ProbeReport, out: TextIO) -> None:
    console = Console(file=out, highlight=False, soft_wrap=False)
    console.print(Text(f"smtpguard probe {report.target}", style="bold"))
    console.print(Text("banner: ", style="bold") + Text(report.banner))
    if report.hello is not None:
        console.print(
            Text("hello: ", style="bold") + Text(f"{report.hello.verb} - {report.hello.detail}")
        )
    table = Table(show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        table.add_row(
            check.id, Text(check.verdict.value, style=_STYLE[check.verdict]), check.detail
        )
    console.print(table)
    if report.variants and any(v.outcome is not Outcome.UNTESTED for v in report.variants):
        smuggling = Table(title="smuggling variants", expand=False)
        smuggling.add_column("variant", no_wrap=True)
        smuggling.add_column("bytes", no_wrap=True)
        smuggling.add_column("end of data", no_wrap=True)
        smuggling.add_column("smuggled", no_wrap=True)
        smuggling.add_column("detail", overflow="fold")
        for v in report.variants:
            bad = v.outcome is Outcome.ACCEPTED or v.smuggled is Delivered.DELIVERED
            style = "bold red" if bad else "green"
            smuggling.add_row(
                v.name,
                v.sequence,
                Text(v.outcome.value, style=style),
                Text(
                    v.smuggled.value,
                    style=style if v.smuggled is not Delivered.UNCHECKED else "dim",
                ),
                v.detail,
            )
        console.print(smuggling)
    elif report.smuggling:
        parts = [f"{name}: {outcome.value}" for name, outcome in report.smuggling.items()]
        console.print(Text("smuggling: ", style="bold") + Text(", ".join(parts)))
    console.print(
        Text("split end-of-data: ", style="bold")
        + Text(report.split_terminator.value)
        + Text("   filter detected: ", style="bold")
        + Text("yes" if report.filter_detected else "no")
    )
    console.print(
        Text("verdict: ", style="bold")
        + Text(report.verdict.value.upper(), style=_STYLE[report.verdict])
        + Text(f" - {report.summary}")
    )
