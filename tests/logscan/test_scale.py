"""At scale, the scan finds exactly what the synthetic generator planted.

Small fixtures cannot show losses that need many messages: queue ids of every
shape, windows expiring over days, thousands of groups in the duplicate index. A
~30 MB log spanning several 24 h windows is scanned and compared with the
generator's own record, finding by finding (line numbers, not just counts). No
timing asserts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtpguard.logscan import synth
from smtpguard.logscan.model import Kind
from smtpguard.logscan.scan import Options, Result, Scanner
from smtpguard.logscan.source import Source

SIZE = 30_000_000


def _scan(path: Path, options: Options) -> Result:
    scanner = Scanner(options)
    src = Source(str(path))
    try:
        scanner.scan(src)
    finally:
        src.close()
    return scanner.finish()


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.Planted]:
    path = tmp_path_factory.mktemp("scale") / "maillog"
    with path.open("wb") as out:
        # step 5 s: ~34 000 messages over ~2 days, so groups expire mid-scan.
        planted = synth.write(out, SIZE, step=5.0, stall_every=700, dup_every=300)
    return path, planted


def test_every_planted_duplicate_and_stall_is_found(
    big_log: tuple[Path, synth.Planted],
) -> None:
    path, planted = big_log
    assert len(planted.duplicates) > 100 and len(planted.stalls) > 40  # real work

    result = _scan(path, Options())

    assert result.files[0].lines == planted.lines
    assert result.deliveries == planted.messages  # no message line was skipped
    assert result.dedupe_evicted_early == 0
    dups = [f for f in result.findings if f.kind is Kind.DUPLICATE]
    found = {f.detail.split("<", 1)[1].split(">", 1)[0]: [c.line for c in f.copies] for f in dups}
    assert len(dups) == len(found) == result.counts["duplicate"]
    assert found == planted.duplicates
    stalls = sorted(f.line for f in result.findings if f.kind is Kind.STALLED_DATA)
    assert stalls == planted.stalls
    assert set(result.counts) == {"duplicate", "stalled_data"}


def test_a_window_shorter_than_the_retry_finds_no_duplicate(
    big_log: tuple[Path, synth.Planted],
) -> None:
    path, planted = big_log
    result = _scan(path, Options(window=synth.REDELIVERY_DELAY / 2))
    assert result.counts["duplicate"] == 0
    assert result.counts["stalled_data"] == len(planted.stalls)


def test_planted_record_matches_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "maillog"
    with path.open("wb") as out:
        planted = synth.write(out, 2_000_000, step=10.0, stall_every=70, dup_every=50)
    data = path.read_bytes()
    assert planted.bytes == len(data)
    lines = data.splitlines()
    assert planted.lines == len(lines)
    for no in planted.stalls:
        assert b"timeout after DATA" in lines[no - 1]
    for msgid, copies in planted.duplicates.items():
        assert len(copies) == 2
        qids = set()
        for no in copies:
            assert b": client=" in lines[no - 1]
            qids.add(lines[no - 1].split(b": ")[1])
        assert len(qids) == 2  # each copy is its own queue file
        assert data.count(b"message-id=<" + msgid.encode() + b">") == 2
    # Short Postfix queue ids are upper-case hex; anything else is not a queue id.
    assert all(re.fullmatch(rb"[0-9A-F]{10,12}", q) for q in re.findall(rb"\]: (\S+): ", data))
