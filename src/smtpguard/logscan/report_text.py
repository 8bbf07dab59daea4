"""Terminal summary: counts per kind and per peer, then the findings (rich tables)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .model import Finding, Kind
from .scan import Result, notes

# Findings listed in the terminal; the JSON and HTML reports list them all.
MAX_ROWS = 50
# The order of kinds in every table: a stall before the copies and attempts it explains.
KIND_ORDER = (
    Kind.STALLED_DATA,
    Kind.DUPLICATE,
    Kind.SUPPRESSED,
    Kind.EHLO_REJECTED,
    Kind.MASKED_BANNER,
    Kind.PIX_REWRITE,
    Kind.PIX_WORKAROUND,
)


def kind_rank(kind: str) -> tuple[int, str]:
    k = str(kind)
    ranks = [str(x) for x in KIND_ORDER]
    return (ranks.index(k) if k in ranks else len(ranks), k)


def in_row_order(findings: Iterable[Finding]) -> list[Finding]:
    """Findings as the tables list them: by time, and at one time a stall before the
    duplicate (attempts, copies) that begins with it."""
    return sorted(findings, key=lambda f: (f.time or datetime.min, kind_rank(f.kind)))


# Below this share of understood lines, say so: logscan may be half reading a variant.
LOW_UNDERSTOOD = 0.5


def render(result: Result, console: Console, hints: Sequence[str] = ()) -> None:
    """``hints``: what the user should know about how the inputs were read (``--year``)."""
    if not result.files:  # every input failed; the errors are on stderr already
        console.print("[red]Nothing was scanned.[/red]")
        return
    files = Table(title="Inputs", title_justify="left")
    for col in ("file", "format", "lines", "understood", "sessions", "messages"):
        files.add_column(col, justify="left" if col in ("file", "format") else "right")
    for st in result.files:
        share = st.understood_share
        files.add_row(
            st.file,
            st.format,
            f"{st.lines:,}",
            "-" if share is None else f"{share:.0%}",
            f"{st.sessions:,}",
            f"{st.messages:,}",
        )
    console.print(files)
    for st in result.files:
        share = st.understood_share
        if share is not None and share < LOW_UNDERSTOOD:
            console.print(
                f"[yellow]{st.file}: only {share:.0%} of its lines read as {st.format}; "
                f"the rest was skipped (see --json lines_understood).[/yellow]"
            )
    for hint in hints:
        console.print(f"[yellow]{escape(hint)}[/yellow]", highlight=False)
    for note in notes(result):  # logs read together, copies set aside and why
        console.print(escape(note), highlight=False)

    if not result.counts:
        if result.errors:
            console.print(
                f"[yellow]No findings in the {len(result.files)} input(s) read; "
                f"{len(result.errors)} could not be read (errors above): no verdict on "
                f"those.[/yellow]"
            )
        else:
            console.print(
                f"[green]No findings.[/green] {result.deliveries:,} deliveries checked "
                f"for duplicates."
            )
        return
    kinds = Table(title="Findings by kind and peer", title_justify="left")
    kinds.add_column("kind")
    kinds.add_column("count", justify="right")
    kinds.add_column("peers (most findings first)")
    per_peer: dict[str, Counter[str]] = {}
    for f in result.findings:
        per_peer.setdefault(str(f.kind), Counter())[f.peer or "?"] += 1
    for kind, n in sorted(result.counts.items(), key=lambda kv: kind_rank(kv[0])):
        top = per_peer.get(kind, Counter()).most_common(4)
        kinds.add_row(kind, str(n), ", ".join(f"{p} ({c})" for p, c in top))
    console.print(kinds)

    table = Table(title="Findings", title_justify="left", show_lines=False)
    for col in ("time", "kind", "peer", "where", "detail"):
        table.add_column(col, overflow="fold")
    for f in in_row_order(result.findings)[:MAX_ROWS]:
        when = f"{f.time:%Y-%m-%d %H:%M:%S}" if f.time else "-"
        table.add_row(when, str(f.kind), f.peer or "-", f"{f.file}:{f.line}", f.detail)
    console.print(table)
    rest = len(result.findings) - MAX_ROWS + result.dropped_findings
    if rest > 0:
        console.print(f"… and {rest:,} more findings (use --json or --html for all).")
