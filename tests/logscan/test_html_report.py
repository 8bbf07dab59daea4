"""The HTML report: one small offline file whose timeline a real browser draws.

Chromium (Debian's package, installed by .ci/run) renders the report headless and
takes a screenshot; the test decodes the PNG and checks that the stalled sessions
(red) and the accepted one (blue) were really drawn, and that nothing was fetched.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from smtpguard.logscan import synth
from smtpguard.logscan.report_html import DELIVERED, STALLED

from .conftest import FIXTURES, run_logscan

SHARED_SEED = Path(__file__).resolve().parents[3] / "shared" / "seed-mailguard-kb.txt"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)


def _report(tmp_path: Path, *logs: Path) -> str:
    out = tmp_path / "report.html"
    code, _ = run_logscan("--html", str(out), *map(str, logs))
    assert code == 1
    return out.read_text()


def _mailguard_log(tmp_path: Path) -> Path:
    log = tmp_path / "ex240207.log"
    log.write_text(synth.mailguard_iis(retries=5))
    return log


def test_report_is_small_offline_and_has_no_script(tmp_path: Path) -> None:
    html = _report(tmp_path, _mailguard_log(tmp_path), FIXTURES / "postfix_maillog")
    assert len(html.encode()) < 100_000  # the plotly page was 4.8 MB
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    assert "https://" not in html


def test_duplicate_row_lines_up_the_retries_with_their_intervals(tmp_path: Path) -> None:
    html = _report(tmp_path, _mailguard_log(tmp_path))
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert "Message &lt;invoice-4711.20240207@partner.example&gt;" in svg
    # five stalled copies and the accepted one, five intervals of 30 minutes
    assert len(re.findall(rf'<rect [^>]*fill="{STALLED}"', svg)) == 5
    assert len(re.findall(rf'<rect [^>]*fill="{DELIVERED}"', svg)) == 1
    assert svg.count(">+30m00s</text>") == 5
    assert "regular intervals" in svg
    assert svg.count("no final reply: the session ended here") == 5
    assert "command rewritten by a PIX" in html  # the xxxx → 500 markers' legend


def test_seed_stall_is_one_red_bar_with_its_354(tmp_path: Path) -> None:
    html = _report(tmp_path, FIXTURES / "ims_kb_article.txt")
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert len(re.findall(rf'<rect [^>]*fill="{STALLED}"', svg)) == 1
    assert ">354</text>" in svg and "mail.domain1.com" in svg


# -- a real browser ---------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is required: install Debian's chromium package (.ci/run does)")
    return path


def screenshot(html: Path, png: Path, size: str = "1200,1000") -> None:
    """Render ``html`` in headless Chromium with a fresh profile; write a PNG."""
    profile = tempfile.mkdtemp(prefix="smtpguard-chromium-")
    try:
        r = subprocess.run(
            [
                _chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--screenshot={png}",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert r.returncode == 0 and png.exists(), r.stderr[-2000:]


def _pixels(png: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) into rows."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line[j] for j in range(stride) if j % channels < 3))
        prev = line
    return width, height, rows


def _count(rows: list[bytes], rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    n = 0
    for row in rows:
        for i in range(0, len(row), 3):
            if all(abs(row[i + k] - rgb[k]) <= tolerance for k in range(3)):
                n += 1
    return n


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _blend(color: str, alpha: float) -> tuple[int, int, int]:
    r, g, b = _rgb(color)
    return tuple(round(alpha * v + (1 - alpha) * 255) for v in (r, g, b))  # type: ignore[return-value]


@pytest.mark.e2e
def test_chromium_draws_the_retries_and_the_stall(tmp_path: Path) -> None:
    html = tmp_path / "mailguard.html"
    run_logscan("--html", str(html), str(_mailguard_log(tmp_path)))
    png = tmp_path / "mailguard.png"
    screenshot(html, png)
    width, height, rows = _pixels(png)
    assert (width, height) == (1200, 1000)
    stalled = _count(rows, _blend(STALLED, 0.35))  # the five red bars' fill
    delivered = _count(rows, _blend(DELIVERED, 0.8))  # the accepted copy's bar
    assert stalled > 5 * 300, stalled  # five bars of ~16 x 45 px
    assert delivered > 40, delivered


@pytest.mark.e2e
@pytest.mark.skipif(not SHARED_SEED.exists(), reason="../shared (the KB article) is absent")
def test_chromium_draws_the_seed_stall(tmp_path: Path) -> None:
    html = tmp_path / "seed.html"
    run_logscan("--html", str(html), str(SHARED_SEED))
    png = tmp_path / "seed.png"
    screenshot(html, png)
    _, _, rows = _pixels(png)
    assert _count(rows, _blend(STALLED, 0.35)) > 16 * 500  # one long red bar
    assert _count(rows, _blend(DELIVERED, 0.8)) < 50  # nothing was accepted
