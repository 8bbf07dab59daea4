"""The seed's story told by real MTAs on loopback (docs/lab.md).

A private Postfix is the sending MTA. Its relayhost is ``smtpguard serve --emulate
pix --emulate-bug split-eod`` (PIX 6.x Mailguard with CSCds90792), in front of
``smtpguard sink --emulate ims`` (a mailbox that, like Exchange 5.5's IMS, delivers
what it has when DATA times out). The masked banner makes Postfix turn on its PIX
work-arounds, and ``smtp_pix_workaround_threshold_time = 0`` turns on
``delay_dotcrlf`` from the first attempt: the ``.CRLF`` of every message leaves in a
segment of its own, the emulated PIX swallows it, the sink times out and delivers
the partial message, Postfix times out waiting for the reply and tries again. Each
message lands several times. The same sender through smtpguard (mailguard mode and
esmtp mode, with the PIX banner so that Postfix splits its terminator the same way)
gets one 250 per message and each lands once. Finally ``smtpguard logscan`` reads the
three logs of each run (Postfix's, the gateway's jsonl, the sink's IMS layout).

Run with ``-s`` to see the measured copy counts and timings.
"""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers import LOOPBACK, GatewayProcess, free_port, wait_port
from tests.postfix import PrivatePostfix, message

pytestmark = pytest.mark.e2e

MESSAGES = 3
PIX_DELAY = 1  # smtp_pix_workaround_delay_time: the pause before ".CRLF"
DATA_DONE_TIMEOUT = 2  # smtp_data_done_timeout: Postfix's wait for the reply to ".CRLF"
# The IMS sink's idle timeout in DATA, longer than Postfix's: Postfix gives up first
# and closes, the emulated PIX passes the close on, the sink delivers what it has.
# (Shorter, the sink gives up first and the gateway, emulation or not, answers the
# sender 421 for the lost server: docs/lab.md.)
SINK_DATA_TIMEOUT = 4
RETRY_WINDOW = 24.0  # how long the emulation run lets Postfix retry
SETTLE = SINK_DATA_TIMEOUT + 1.0  # after the last 250: no partial copy may follow

# What Postfix logs when it turns delay_dotcrlf on (the masked banner did it).
SPLITTING = "enabling PIX workarounds: disable_esmtp delay_dotcrlf"

SENDER = {
    "default_transport": "smtp",
    # The PIX work-arounds from the first attempt, and short enough to wait for.
    "smtp_pix_workaround_threshold_time": "0",
    "smtp_pix_workaround_delay_time": f"{PIX_DELAY}s",
    "smtp_data_done_timeout": f"{DATA_DONE_TIMEOUT}s",
    # Retry every few seconds, not every few minutes.
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
}


class SinkProcess:
    """``smtpguard sink --emulate ims`` as a subprocess, as an administrator runs it."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.maildir = workdir / f"{name}-mail"
        self.log = workdir / f"{name}-sink.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smtpguard",
                "sink",
                "--listen",
                f"{LOOPBACK}:{self.port}",
                "--maildir",
                str(self.maildir),
                "--emulate",
                "ims",
                "--data-timeout",
                str(SINK_DATA_TIMEOUT),
                "--log",
                str(self.log),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def copies(self) -> collections.Counter[str]:
        """Messages in the Maildir, counted per Message-ID."""
        counts: collections.Counter[str] = collections.Counter()
        for sub in ("new", "cur"):
            for path in (self.maildir / sub).glob("*") if (self.maildir / sub).exists() else ():
                m = re.search(rb"(?mi)^Message-ID:\s*<([^>]+)>", path.read_bytes())
                counts[m.group(1).decode() if m else "(none)"] += 1
        return counts

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


class Run:
    """One chain: a private Postfix sender → ``smtpguard serve ARGS`` → the IMS sink."""

    def __init__(self, workdir: Path, name: str, *serve_args: str) -> None:
        self.name = name
        self.ids = [f"{name}-{n}@lab.test" for n in range(1, MESSAGES + 1)]
        self.gateway_log = workdir / f"{name}-gateway.jsonl"
        self.postfix_log = workdir / f"{name}-postfix.log"
        self.sink = SinkProcess(workdir, name)
        self.gw: GatewayProcess | None = None
        self.pf: PrivatePostfix | None = None
        try:
            self.gw = GatewayProcess(
                "--upstream",
                self.sink.address,
                "--protocol-log",
                str(self.gateway_log),
                "--protocol-log-format",
                "jsonl",
                *serve_args,
                workdir=workdir,
            )
            relay = {"relayhost": f"[{LOOPBACK}]:{self.gw.port}"}
            self.pf = PrivatePostfix(f"lab-{name}", **relay, **SENDER).start()
        except BaseException:
            self.stop()
            raise
        self.started = time.monotonic()
        for mid in self.ids:
            # One envelope, one size: only the Message-ID tells the messages apart,
            # in every log logscan reads (the gateway's and the sink's name it).
            self.pf.sendmail("a@example.org", ["b@relay.example"], message(mid, "lab", "hello"))

    def stop(self) -> None:
        """Stop Postfix first (no more retries), keeping its log, then the rest."""
        if self.pf is not None:
            self.postfix_log.write_text(self.pf.log())
            self.pf.stop()
            self.pf = None
        if self.gw is not None:
            self.gw.stop()
            self.gw = None
        self.sink.stop()

    def sent(self) -> int:
        """How many of the messages Postfix logged as sent (a 250 after the dot)."""
        assert self.pf is not None
        text = self.pf.log()
        return sum(any("status=sent" in ln for ln in self.pf.outcomes(m, text)) for m in self.ids)

    def attempts(self) -> int:
        """Postfix's delivery attempts (one status= line each)."""
        text = self.postfix_log.read_text() if self.pf is None else self.pf.log()
        return len(re.findall(r"status=(sent|deferred|bounced)", text))


def logscan(*files: Path) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "smtpguard", "logscan", "--json", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode in (0, 1), (r.returncode, r.stderr)
    report: dict[str, object] = json.loads(r.stdout)
    return report


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """The lab's numbers on the terminal of every run (CI's log too), not only -s."""
    with capsys.disabled():
        print(line, flush=True)


def _named(detail: str) -> str:
    m = re.match(r"Message <([^>]+)>", detail)
    return m.group(1) if m else detail


def _times(detail: str) -> int:
    m = re.search(r"reached the end of data (\d+) times", detail)
    return int(m.group(1)) if m else 0


def kinds(report: dict[str, object], file: Path | None = None) -> collections.Counter[str]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return collections.Counter(
        f["kind"] for f in findings if file is None or Path(f["file"]).name == file.name
    )


def test_seed_story_duplicates_behind_emulated_pix_once_through_smtpguard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path
    table: list[str] = []

    # 1. PIX 6.x with CSCds90792 in front of an IMS: every attempt is another copy.
    pix = Run(workdir, "pix", "--emulate", "pix", "--emulate-bug", "split-eod")
    try:
        deadline = pix.started + RETRY_WINDOW
        while time.monotonic() < deadline:
            time.sleep(0.5)
        assert pix.sent() == 0, "no 250 may reach the sender through the split-eod bug"
    finally:
        pix.stop()
    pix_copies = pix.sink.copies()
    pix_counts = [pix_copies[m] for m in pix.ids]
    table.append(
        f"emulated PIX + IMS: copies per message {pix_counts} in {RETRY_WINDOW:.0f} s, "
        f"{pix.attempts()} Postfix attempts, none acknowledged"
    )
    show(capsys, "\n" + table[-1])

    # 2. The same sender through smtpguard, in each mode: one 250, one copy.
    runs = {"pix": pix}
    for mode in ("mailguard", "esmtp"):
        run = Run(workdir, mode, "--mode", mode, "--banner", "pix")
        runs[mode] = run
        try:
            deadline = run.started + 30
            while run.sent() < MESSAGES and time.monotonic() < deadline:
                time.sleep(0.2)
            took = time.monotonic() - run.started
            assert run.sent() == MESSAGES, run.pf.log()[-3000:] if run.pf else ""
            time.sleep(SETTLE)  # a partial copy would follow the sink's data timeout
        finally:
            run.stop()
        counts = [run.sink.copies()[m] for m in run.ids]
        table.append(
            f"smtpguard --mode {mode}: copies per message {counts}, all sent in {took:.1f} s, "
            f"{run.attempts()} Postfix attempts"
        )
        show(capsys, table[-1])
        assert counts == [1] * MESSAGES, "\n".join(table)
        # the sender did split its terminator, as through the emulation
        assert SPLITTING in run.postfix_log.read_text(), "\n".join(table)
        assert "delivered the" not in run.sink.log.read_text(), "\n".join(table)
    assert all(n > 1 for n in pix_counts), "\n".join(table)
    assert SPLITTING in pix.postfix_log.read_text()

    # 3. What logscan tells from each run's three logs.
    for name, run in runs.items():
        files = (run.postfix_log, run.gateway_log, run.sink.log)
        report = logscan(*files)
        found = {f.name: dict(kinds(report, f)) for f in files}
        show(capsys, f"logscan, {name} run: {found}")
        findings = report["findings"]
        assert isinstance(findings, list)
        if name == "pix":
            copies = run.sink.copies()
            for f in files:
                # Each log shows each message's copies as one duplicate, named by its
                # Message-ID; the sink's log counts exactly the copies in the Maildir.
                dups = {
                    _named(d["detail"]): _times(d["detail"])
                    for d in findings
                    if d["kind"] == "duplicate" and Path(d["file"]).name == f.name
                }
                assert set(dups) == set(run.ids), (f.name, found)
                if f is run.sink.log:
                    assert dups == {m: copies[m] for m in run.ids}, (dups, copies)
                else:
                    assert all(n > 1 for n in dups.values()), (f.name, dups)
            # Every stall the gateway and the sink logged names the emulated bug, and
            # none is taken for a refusal of the gateway's.
            stalls = [
                d
                for d in findings
                if d["kind"] == "stalled_data"
                and Path(d["file"]).name in (run.gateway_log.name, run.sink.log.name)
            ]
            assert kinds(report, run.sink.log)["stalled_data"] == sum(copies.values()), found
            assert kinds(report, run.gateway_log)["stalled_data"] >= MESSAGES, found
            assert all(d.get("cause", {}).get("event") == "SG-EMULATE-SPLIT-EOD" for d in stalls)
            assert not kinds(report)["gateway_abort"], found
        else:
            # Through smtpguard: what the sender was told and what it did (a masked
            # banner, as asked, and Postfix's work-arounds for it), nothing else.
            assert set(kinds(report)) <= {"masked_banner", "pix_workaround"}, found
