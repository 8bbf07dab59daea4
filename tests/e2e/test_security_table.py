"""The end-of-data table of docs/security.md, measured against real Postfix.

Every variant of a bogus end of data is sent, followed by a complete smuggled second
transaction, to: the gateway (``reject``) in front of Postfix, the gateway
(``normalize``) in front of Postfix, Postfix with its defaults, and Postfix with
``smtpd_forbid_bare_newline = yes`` (and no exclusions: they default to
``$mynetworks``, which holds loopback). What each did is read from the Postfix mailbox
(was the smuggled message delivered? the real one?) and from the client's replies.
The table in docs/security.md must be exactly what this measures; set
``SMTPGUARD_WRITE_SECURITY_TABLE=1`` to rewrite it from a run.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_hostile_upstream import VARIANTS, session
from tests.peers import GatewayProcess
from tests.postfix import MAILBOX_DOMAIN, PrivatePostfix

DOC = Path(__file__).parents[2] / "docs" / "security.md"
BEGIN, END = "<!-- end-of-data table: begin -->", "<!-- end-of-data table: end -->"
COLUMNS = ("gateway reject", "gateway normalize", "Postfix defaults", "Postfix forbid=yes")


def body(tag: str, variant: bytes) -> bytes:
    smuggled = (
        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@" + MAILBOX_DOMAIN.encode() + b">\r\n"
        b"DATA\r\nSubject: smuggled-" + tag.encode() + b"\r\n\r\nX"
    )
    return b"-" + tag.encode() + b"-" + variant + smuggled


def outcome(out: bytes, mailbox: bytes, tag: str) -> str:
    replies = re.findall(rb"(?m)^(\d{3})[ -]", out)
    after_data = replies[replies.index(b"354") + 1 :] if b"354" in replies else []
    final = after_data[0].decode() if after_data else "none"
    # virtual(8) starts each mbox message with "From <envelope sender>": a smuggled
    # message is one of its own from the attacker, not its text inside the real one
    messages = re.split(rb"(?m)^(?=From )", mailbox)
    smuggled = any(
        m.startswith(b"From evil@attacker.test") and f"smuggled-{tag}".encode() in m
        for m in messages
    )
    real = any(m.startswith(b"From a@example.org") and f"-{tag}-".encode() in m for m in messages)
    if smuggled:
        return f"**smuggled** (second message delivered; client got {final})"
    if real and final == "250":
        return "delivered once, no smuggling (250)"
    if not real and final.startswith("5"):
        return f"refused ({final}), nothing delivered"
    if not real and final == "none":
        return "session closed, nothing delivered"
    return f"other: client got {final}, delivered={real}"  # pragma: no cover - reported


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, Path]]]:
    tmp = tmp_path_factory.mktemp("security-table")
    started: list[PrivatePostfix | GatewayProcess] = []
    try:
        behind = PrivatePostfix("smtpguard-sec").start()
        started.append(behind)
        # the exclusions default to $mynetworks, which holds loopback: empty them
        strict = PrivatePostfix(
            "smtpguard-secfb",
            smtpd_forbid_bare_newline="yes",
            smtpd_forbid_bare_newline_exclusions="",
        ).start()
        started.append(strict)
        out: dict[str, tuple[str, Path]] = {}
        for column, mode in (("gateway reject", "reject"), ("gateway normalize", "normalize")):
            cfg = tmp / f"{mode}.toml"
            cfg.write_text(f'smuggling = "{mode}"\nhostname = "gw.example.test"\n')
            gw = GatewayProcess("--config", str(cfg), "--upstream", behind.address, workdir=tmp)
            started.append(gw)
            out[column] = (gw.address, behind.mailbox)
        out["Postfix defaults"] = (behind.address, behind.mailbox)
        out["Postfix forbid=yes"] = (strict.address, strict.mailbox)
        yield out
    finally:
        for peer in reversed(started):
            peer.stop()


def tag_of(column: str, name: str) -> str:
    return f"{COLUMNS.index(column)}{list(VARIANTS).index(name):02d}"


def mailbox(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def measure(targets: dict[str, tuple[str, Path]]) -> dict[tuple[str, str], str]:
    replies = {
        (c, n): session(targets[c][0], body(tag_of(c, n), v))
        for c in COLUMNS
        for n, v in VARIANTS.items()
    }
    # wait until every message whose DATA got a 250 has landed in its mailbox; a
    # smuggled message is accepted right after it, so give that a moment more
    accepted = [k for k, out in replies.items() if b"\r\n250 2.0.0 Ok: queued" in out]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        f"-{tag_of(c, n)}-".encode() in mailbox(targets[c][1]) for c, n in accepted
    ):
        time.sleep(0.3)
    time.sleep(2.0)
    return {
        (c, n): outcome(replies[(c, n)], mailbox(targets[c][1]), tag_of(c, n))
        for c in COLUMNS
        for n in VARIANTS
    }


def render(results: dict[tuple[str, str], str]) -> str:
    rows = ["| variant | bytes | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, variant in VARIANTS.items():
        names = {0x0D: "CR", 0x0A: "LF", 0x00: "NUL", 0x2E: "."}
        shown = " ".join(names[b] for b in variant)
        cells = [results[(c, name)] for c in COLUMNS]
        rows.append(f"| {name} | `{shown}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


@pytest.mark.e2e
def test_the_documented_table_is_what_postfix_and_the_gateway_do(
    targets: dict[str, tuple[str, Path]],
) -> None:
    results = measure(targets)
    # the defence itself, whatever the document says
    for name in VARIANTS:
        assert "smuggled" not in results[("gateway reject", name)]
        assert "smuggled" not in results[("gateway normalize", name)]
    table = render(results)
    text = DOC.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if os.environ.get("SMTPGUARD_WRITE_SECURITY_TABLE") == "1":
        DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    documented = text.partition(BEGIN)[2].partition(END)[0].strip()
    assert documented == table, "docs/security.md is out of date:\n" + table
