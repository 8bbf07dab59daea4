"""``--html``: one small, offline file — an SVG timeline we draw ourselves, then tables.

The timeline answers "what happened to this message / this sender" at a glance:

* one row per duplicated message: every copy is a bar from its session's connect to
  its end (final reply, or the end of a stalled session), stalled copies red with
  their 354 marked and a cross where the session died without a final reply, and
  the interval between consecutive copies written above the gap — a regular cadence
  is a sender's retry schedule, the Mailguard signature;
* one row per sender (peer) with the other findings: stalled sessions as red bars,
  EHLO refusals, masked banners, PIX rewrites and work-arounds as markers.

All rows share one time axis, so re-sends line up. No script, no external resource:
tooltips are SVG ``<title>`` elements. Sizes are capped (rows, copies, table rows).
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from .model import Copy, Finding, Kind
from .report_text import in_row_order, kind_rank
from .scan import Result
from .timefmt import human_delta

MAX_ROWS = 40
MAX_TABLE_ROWS = 5000
WIDTH = 1100
LABEL_W = 300
PLOT_W = WIDTH - LABEL_W - 30
ROW_H = 46
TOP = 56
MIN_BAR = 5  # px: a session of a few seconds on a day-long axis must still show
DELIVERED = "#2b6cb0"
STALLED = "#c53030"
MARKERS = {
    Kind.EHLO_REJECTED: ("#dd6b20", "EHLO refused 500/502"),
    Kind.MASKED_BANNER: ("#6b46c1", "masked 220 banner"),
    Kind.PIX_REWRITE: ("#975a16", "command rewritten by a PIX (XXXX → 500)"),
    Kind.PIX_WORKAROUND: ("#2f855a", "Postfix PIX work-arounds on"),
}
# Axis steps, "nice" ones from a second to 50 years: seconds for fixed lengths, then
# whole months and years (calendar steps). The first whose ticks fit is drawn.
_FIXED_STEPS = [
    timedelta(seconds=s)
    for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
] + [timedelta(hours=12), timedelta(days=1), timedelta(days=2), timedelta(days=7)]
_MONTH_STEPS = [1, 2, 3, 6, 12, 24, 60, 120, 240, 600]  # calendar months
_STEPS: list[timedelta | int] = [*_FIXED_STEPS, timedelta(days=14), *_MONTH_STEPS]
MAX_TICKS = 12
CHAR_W = 7.5  # px per label character at font-size 12, with room to spare


class _Row:
    def __init__(self, label: str, title: str) -> None:
        self.label = label
        self.title = title
        self.copies: list[Copy] = []
        self.intervals = False  # label the gaps between consecutive bars
        self.marks: list[Finding] = []
        self.note = ""


def _rows(findings: list[Finding]) -> tuple[list[_Row], int]:
    rows: list[_Row] = []
    covered: set[tuple[str, int]] = set()  # stalls already drawn in a duplicate's row
    for f in findings:
        if f.kind is not Kind.DUPLICATE or not f.copies:
            continue
        desc = f.detail.split(" reached the end of data", 1)[0]
        row = _Row(desc, f.detail)
        row.copies = [c for c in f.copies if c.time is not None]
        row.intervals = True
        gaps = [(_when(b) - _when(a)).total_seconds() for a, b in itertools.pairwise(row.copies)]
        if len(gaps) >= 2 and min(gaps) > 0 and max(gaps) <= 1.25 * min(gaps):
            row.note = "regular intervals: a retry schedule"
        covered.update((c.file, c.line) for c in row.copies)
        rows.append(row)
    per_peer: dict[str, _Row] = {}
    for f in findings:
        if f.kind is Kind.DUPLICATE or f.time is None:
            continue
        peer = f.peer or "?"
        if peer not in per_peer:
            per_peer[peer] = _Row(peer, f"sender {peer}")
        row = per_peer[peer]
        if f.kind is Kind.STALLED_DATA:
            for c in f.copies or (Copy(f.file, f.line, f.time, f.peer, True, f.start, f.time),):
                if (c.file, c.line) not in covered:
                    row.copies.append(c)
        else:
            row.marks.append(f)
    ranked = sorted(per_peer.values(), key=lambda r: -(len(r.copies) + len(r.marks)))
    rows += [r for r in ranked if r.copies or r.marks]
    return rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS)


def _when(c: Copy) -> datetime:
    """When a copy's session began (its connect), else when its data ended."""
    t = c.start or c.time
    assert t is not None
    return t


def _span(rows: list[_Row]) -> tuple[datetime, datetime] | None:
    times: list[datetime] = []
    for r in rows:
        for c in r.copies:
            times += [t for t in (c.start, c.time, c.end) if t is not None]
        times += [f.time for f in r.marks if f.time is not None]
    if not times:
        return None
    lo, hi = min(times), max(times)
    pad = max((hi - lo) * 0.03, timedelta(seconds=1))
    return lo - pad, hi + pad


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def timeline_svg(findings: list[Finding]) -> str:
    rows, hidden = _rows(findings)
    span = _span(rows)
    if span is None:
        return '<p class="none">Nothing to draw: no finding carries a time.</p>'
    lo, hi = span
    total = (hi - lo).total_seconds()

    def x(t: datetime) -> float:
        return LABEL_W + (t - lo).total_seconds() / total * PLOT_W

    height = TOP + ROW_H * len(rows) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="system-ui,sans-serif" font-size="12" '
        f'role="img" aria-label="sessions per message and sender over time">'
    ]
    out += _axis(lo, hi, x, height)
    for i, row in enumerate(rows):
        y = TOP + i * ROW_H
        if i % 2:
            out.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{ROW_H}" fill="#f7f7f9"/>')
        label = row.label if len(row.label) <= 44 else row.label[:43] + "…"
        out.append(f'<text x="8" y="{y + 20}"><title>{_esc(row.title)}</title>{_esc(label)}</text>')
        if row.note:
            out.append(f'<text x="8" y="{y + 36}" fill="#555" font-size="11">{row.note}</text>')
        out += _bars(row, y, x)
        for f in row.marks:
            color, what = MARKERS.get(f.kind, ("#444", str(f.kind)))
            assert f.time is not None
            cx, cy = x(f.time), y + 26
            out.append(
                f'<path d="M{cx:.1f} {cy - 7} L{cx + 7:.1f} {cy} L{cx:.1f} {cy + 7} '
                f'L{cx - 7:.1f} {cy} Z" fill="{color}"><title>{_esc(what)} '
                f"{f.time:%Y-%m-%d %H:%M:%S} {_esc(f.file)}:{f.line}&#10;"
                f"{_esc(f.detail[:300])}</title></path>"
            )
    if hidden:
        out.append(
            f'<text x="8" y="{height - 12}" fill="#555">{hidden} more rows not drawn '
            f"(see the table below and --json)</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def ticks(lo: datetime, hi: datetime, width: float = PLOT_W) -> list[tuple[datetime, str]]:
    """Axis ticks for ``lo``..``hi``: the finest nice step (seconds to decades) that
    gives at most ``MAX_TICKS`` ticks whose labels fit side by side in ``width`` px."""
    for step in _STEPS:
        if isinstance(step, timedelta):
            if (hi - lo) / step > MAX_TICKS:
                continue
            times = _fixed_ticks(lo, hi, step)
        else:
            if (hi - lo).days / 30.4 / step > MAX_TICKS:
                continue
            times = _month_ticks(lo, hi, step)
        fmt = _label_format(lo, hi, step)
        label_w = CHAR_W * len(f"{lo:{fmt}}") + 12
        if len(times) <= 1 or len(times) * label_w <= width:
            return [(t, f"{t:{fmt}}") for t in times]
    return []


def _fixed_ticks(lo: datetime, hi: datetime, step: timedelta) -> list[datetime]:
    midnight = lo.replace(hour=0, minute=0, second=0, microsecond=0)
    t = midnight + step * -(-(lo - midnight) // step)  # the first tick at or after lo
    out: list[datetime] = []
    while t <= hi:
        out.append(t)
        t += step
    return out


def _month_ticks(lo: datetime, hi: datetime, months: int) -> list[datetime]:
    """The first of every ``months``-th month (January-aligned) within lo..hi."""
    index = lo.year * 12 + lo.month - 1  # months since year 0 of lo's month
    if lo > datetime(lo.year, lo.month, 1):
        index += 1
    index += -index % months
    out: list[datetime] = []
    while True:
        t = datetime(index // 12, index % 12 + 1, 1)
        if t > hi:
            return out
        out.append(t)
        index += months


def _label_format(lo: datetime, hi: datetime, step: timedelta | int) -> str:
    if isinstance(step, int):
        return "%Y" if step % 12 == 0 else "%Y-%m"
    if step >= timedelta(days=1):
        return "%m-%d" if lo.year == hi.year else "%Y-%m-%d"
    clock = "%H:%M:%S" if step < timedelta(minutes=1) else "%H:%M"
    return clock if lo.date() == hi.date() else f"%m-%d {clock}"


def _axis(lo: datetime, hi: datetime, x: Callable[[datetime], float], height: int) -> list[str]:
    out = [
        f'<line x1="{LABEL_W}" y1="{TOP - 6}" x2="{LABEL_W + PLOT_W}" y2="{TOP - 6}" '
        f'stroke="#999"/>'
    ]
    for t, label in ticks(lo, hi):
        px = x(t)
        out.append(
            f'<line x1="{px:.1f}" y1="{TOP - 10}" x2="{px:.1f}" y2="{height - 30}" '
            f'stroke="#e2e2e2"/>'
        )
        out.append(f'<text x="{px:.1f}" y="{TOP - 14}" text-anchor="middle">{label}</text>')
    span = f"{lo:%Y-%m-%d}" if lo.date() == hi.date() else f"{lo:%Y-%m-%d} to {hi:%Y-%m-%d}"
    out.append(f'<text x="{LABEL_W}" y="16" font-weight="bold">{span}</text>')
    return out


def _bars(row: _Row, y: int, x: Callable[[datetime], float]) -> list[str]:
    out: list[str] = []
    ordered = sorted(row.copies, key=_when)
    prev: Copy | None = None
    for c in ordered:
        assert c.time is not None
        start, end = c.start or c.time, c.end or c.time
        x0, x1 = x(min(start, c.time)), x(max(end, c.time))
        if x1 - x0 < MIN_BAR:
            x1 = x0 + MIN_BAR
        color = STALLED if c.stalled else DELIVERED
        what = "stalled: 354, then no final reply" if c.stalled else "accepted (final 2xx)"
        tip = (
            f"{what}&#10;session {start:%H:%M:%S} to {end:%H:%M:%S}, DATA at "
            f"{c.time:%H:%M:%S}&#10;{_esc(c.peer)} · {_esc(c.file)}:{c.line}"
        )
        out.append(
            f'<rect x="{x0:.1f}" y="{y + 18}" width="{x1 - x0:.1f}" height="16" rx="2" '
            f'fill="{color}" fill-opacity="{0.35 if c.stalled else 0.8}" stroke="{color}">'
            f"<title>{tip}</title></rect>"
        )
        if c.stalled:
            xd = x(c.time)
            if xd < x1 - 3:  # the 354, when the log says when it was sent
                out.append(
                    f'<line x1="{xd:.1f}" y1="{y + 15}" x2="{xd:.1f}" y2="{y + 37}" '
                    f'stroke="{STALLED}" stroke-width="2"/>'
                )
                out.append(
                    f'<text x="{xd:.1f}" y="{y + 46}" text-anchor="middle" '
                    f'fill="{STALLED}" font-size="10">354</text>'
                )
            out.append(
                f'<path d="M{x1 - 4:.1f} {y + 22} l8 8 m0 -8 l-8 8" stroke="{STALLED}" '
                f'stroke-width="2.5"><title>no final reply: the session ended here</title>'
                f"</path>"
            )
        if row.intervals and prev is not None:
            xa, xb = x(_when(prev)), x(_when(c))
            mid = (xa + xb) / 2
            out.append(
                f'<path d="M{xa:.1f} {y + 12} V{y + 8} H{xb:.1f} V{y + 12}" fill="none" '
                f'stroke="#555"/>'
            )
            out.append(
                f'<text x="{mid:.1f}" y="{y + 6}" text-anchor="middle" font-size="11">'
                f"{human_delta(_when(c) - _when(prev))}</text>"
            )
        prev = c
    return out


_LEGEND = (
    f'<p class="legend"><span style="background:{DELIVERED}"></span>session, message '
    f'accepted <span style="background:{STALLED};opacity:.6"></span>session stalled after '
    f"354 (✕: ended with no final reply) "
    + "".join(
        f'<span style="background:{c};transform:rotate(45deg);width:9px;height:9px">'
        f"</span>{_esc(w)} "
        for c, w in MARKERS.values()
    )
    + "· numbers above a message's bars: the time between its copies' sessions</p>"
)


def write(result: Result, path: Path, hints: Sequence[str] = ()) -> None:
    """``hints``: what the reader should know about how the inputs were read."""
    chart = timeline_svg(result.findings)
    rows = []
    for f in in_row_order(result.findings)[:MAX_TABLE_ROWS]:
        when = f"{f.time:%Y-%m-%d %H:%M:%S}" if f.time else "-"
        cells = (when, str(f.kind), f.peer or "-", f.session, f"{f.file}:{f.line}", f.detail)
        rows.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    counts = (
        "".join(
            f"<li><b>{_esc(k)}</b>: {n}</li>"
            for k, n in sorted(result.counts.items(), key=lambda kv: kind_rank(kv[0]))
        )
        or "<li>no findings</li>"
    )
    files = "".join(
        f"<tr><td>{_esc(f.file)}</td><td>{_esc(f.format)}</td><td>{f.lines:,}</td>"
        f"<td>{'-' if f.understood_share is None else f'{f.understood_share:.0%}'}</td>"
        f"<td>{f.sessions:,}</td><td>{f.messages:,}</td></tr>"
        for f in result.files
    )
    errors = "".join(f"<li>{_esc(e)}</li>" for e in result.errors)
    if hints:
        errors = "<ul>" + "".join(f"<li>{_esc(h)}</li>" for h in hints) + "</ul>" + errors
    errors = f'<h2>Not read</h2><ul class="err">{errors}</ul>' if errors else ""
    more = len(result.findings) - MAX_TABLE_ROWS
    note = f"<p>{more:,} more findings not listed; see --json.</p>" if more > 0 else ""
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>smtpguard logscan report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}}
.legend span{{display:inline-block;width:22px;height:10px;margin:0 4px 0 12px}}
.legend{{font-size:13px}} .err{{color:#c53030}}
</style></head><body>
<h1>smtpguard logscan</h1>
<h2>Inputs</h2>
<table><tr><th>file</th><th>format</th><th>lines</th><th>understood</th><th>sessions</th>
<th>messages</th></tr>{files}</table>
{errors}
<h2>Findings</h2><ul>{counts}</ul>
<h2>Timeline: sessions per message and per sender</h2>
{_LEGEND}
{chart}
<h2>All findings</h2>
<table><tr><th>time</th><th>kind</th><th>peer</th><th>session</th><th>where</th>
<th>detail</th></tr>
{"".join(rows)}
</table>{note}
</body></html>
"""
    path.write_text(doc, encoding="utf-8")
