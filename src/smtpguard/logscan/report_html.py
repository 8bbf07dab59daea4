"""``--html``: one self-contained file, a per-peer timeline (plotly) and the findings.

The chart has one row per peer (the peers with most findings, capped), time on the
x axis, one marker style per kind; the copies of a duplicate are joined by a line so
regular retry intervals show at a glance. plotly.js is embedded, so the report opens
offline.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

from .model import Finding, Kind
from .scan import Result

MAX_PEERS = 40
MAX_TABLE_ROWS = 5000

_STYLE = {
    Kind.STALLED_DATA: ("x", "#d62728"),
    Kind.DUPLICATE: ("circle", "#1f77b4"),
    Kind.EHLO_REJECTED: ("triangle-up", "#ff7f0e"),
    Kind.MASKED_BANNER: ("square", "#9467bd"),
    Kind.PIX_WORKAROUND: ("diamond", "#8c564b"),
}


class HtmlUnavailable(Exception):
    """plotly is not installed."""


def figure_html(findings: list[Finding]) -> str:
    try:
        import plotly.graph_objects as go
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise HtmlUnavailable("--html needs plotly: pip install 'smtpguard[logscan]'") from exc
    timed = [f for f in findings if f.time is not None]
    peers = [p for p, _ in Counter(f.peer or "?" for f in timed).most_common(MAX_PEERS)]
    shown = set(peers)
    fig = go.Figure()
    for kind, (symbol, color) in _STYLE.items():
        xs, ys, texts = [], [], []
        for f in timed:
            if f.kind is not kind or kind is Kind.DUPLICATE or (f.peer or "?") not in shown:
                continue
            xs.append(f.time)
            ys.append(f.peer or "?")
            texts.append(f"{f.file}:{f.line}<br>{html.escape(f.detail[:200])}")
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="markers",
                    name=str(kind),
                    text=texts,
                    hoverinfo="x+y+text",
                    marker={"symbol": symbol, "size": 12, "color": color},
                )
            )
    first_dup = True
    for f in timed:
        if f.kind is not Kind.DUPLICATE:
            continue
        copies = [c for c in f.copies if c.time is not None]
        ys = [c.peer or "?" for c in copies]
        if not copies or not any(y in shown for y in ys):
            continue
        fig.add_trace(
            go.Scatter(
                x=[c.time for c in copies],
                y=ys,
                mode="lines+markers",
                name="duplicate (copies joined)",
                legendgroup="duplicate",
                showlegend=first_dup,
                text=[f"copy {i + 1}: {c.file}:{c.line}" for i, c in enumerate(copies)],
                hoverinfo="x+y+text",
                marker={"symbol": "circle", "size": 10, "color": _STYLE[Kind.DUPLICATE][1]},
                line={"color": _STYLE[Kind.DUPLICATE][1], "dash": "dot"},
            )
        )
        first_dup = False
    fig.update_layout(
        title="Findings per peer over time",
        xaxis_title="time",
        yaxis_title="peer",
        yaxis={"categoryorder": "array", "categoryarray": list(reversed(peers))},
        height=max(320, 40 * len(peers) + 160),
        template="plotly_white",
    )
    return str(fig.to_html(full_html=False, include_plotlyjs=True))


def write(result: Result, path: Path) -> None:
    chart = figure_html(result.findings)
    rows = []
    for f in result.findings[:MAX_TABLE_ROWS]:
        when = f"{f.time:%Y-%m-%d %H:%M:%S}" if f.time else "-"
        cells = (when, str(f.kind), f.peer or "-", f.session, f"{f.file}:{f.line}", f.detail)
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    counts = (
        "".join(f"<li><b>{html.escape(k)}</b>: {n}</li>" for k, n in sorted(result.counts.items()))
        or "<li>no findings</li>"
    )
    files = "".join(
        f"<li>{html.escape(f.file)} — {html.escape(f.format)}, {f.lines:,} lines, "
        f"{f.sessions:,} sessions</li>"
        for f in result.files
    )
    more = len(result.findings) - MAX_TABLE_ROWS
    note = f"<p>{more:,} more findings not listed; see --json.</p>" if more > 0 else ""
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>smtpguard logscan report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em}}
table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}}
</style></head><body>
<h1>smtpguard logscan</h1>
<h2>Inputs</h2><ul>{files}</ul>
<h2>Findings</h2><ul>{counts}</ul>
{chart}
<table><tr><th>time</th><th>kind</th><th>peer</th><th>session</th><th>where</th>
<th>detail</th></tr>
{"".join(rows)}
</table>{note}
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
