"""Terminal summary: counts per kind and per peer, then the findings (rich tables)."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from .scan import Result

# Findings listed in the terminal; the JSON and HTML reports list them all.
MAX_ROWS = 50


def render(result: Result, console: Console) -> None:
    files = Table(title="Inputs", title_justify="left")
    for col in ("file", "format", "lines", "sessions"):
        files.add_column(col, justify="right" if col in ("lines", "sessions") else "left")
    for st in result.files:
        files.add_row(st.file, st.format, f"{st.lines:,}", f"{st.sessions:,}")
    console.print(files)

    if not result.counts:
        console.print(
            f"[green]No findings.[/green] {result.deliveries:,} deliveries checked for duplicates."
        )
        return
    kinds = Table(title="Findings by kind and peer", title_justify="left")
    kinds.add_column("kind")
    kinds.add_column("count", justify="right")
    kinds.add_column("peers (most findings first)")
    per_peer: dict[str, Counter[str]] = {}
    for f in result.findings:
        per_peer.setdefault(str(f.kind), Counter())[f.peer or "?"] += 1
    for kind, n in sorted(result.counts.items()):
        top = per_peer.get(kind, Counter()).most_common(4)
        kinds.add_row(kind, str(n), ", ".join(f"{p} ({c})" for p, c in top))
    console.print(kinds)

    table = Table(title="Findings", title_justify="left", show_lines=False)
    for col in ("time", "kind", "peer", "where", "detail"):
        table.add_column(col, overflow="fold")
    for f in result.findings[:MAX_ROWS]:
        when = f"{f.time:%Y-%m-%d %H:%M:%S}" if f.time else "-"
        table.add_row(when, str(f.kind), f.peer or "-", f"{f.file}:{f.line}", f.detail)
    console.print(table)
    rest = len(result.findings) - MAX_ROWS + result.dropped_findings
    if rest > 0:
        console.print(f"… and {rest:,} more findings (use --json or --html for all).")
