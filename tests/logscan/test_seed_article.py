"""The KB article's own log excerpt (with its prose) yields exactly one stall."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import FIXTURES, scan_json

SHARED_SEED = Path(__file__).resolve().parents[3] / "shared" / "seed-mailguard-kb.txt"


def _check(path: Path) -> None:
    code, doc = scan_json(str(path))
    assert code == 1
    assert [f["kind"] for f in doc["findings"]] == ["stalled_data"]
    (f,) = doc["findings"]
    assert f["peer"] == "mail.domain1.com"
    assert f["time"] == "2001-02-07T17:01:23"
    assert "354" in f["detail"]
    assert doc["summary"]["files"][0]["format"] == "ims"


def test_article_excerpt_yields_one_stall_for_domain1() -> None:
    _check(FIXTURES / "ims_kb_article.txt")


@pytest.mark.skipif(not SHARED_SEED.exists(), reason="shared/ not beside the checkout")
def test_shared_seed_file_yields_one_stall_for_domain1() -> None:
    _check(SHARED_SEED)


def test_prose_reply_lines_in_the_article_are_not_findings() -> None:
    # The article quotes "220 ****…" and "500 Unrecognized command" in prose; only
    # timestamped log lines may make findings.
    _, doc = scan_json(str(FIXTURES / "ims_kb_article.txt"))
    kinds = {f["kind"] for f in doc["findings"]}
    assert "masked_banner" not in kinds and "ehlo_rejected" not in kinds
