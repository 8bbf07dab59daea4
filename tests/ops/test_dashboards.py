"""deploy/grafana/smtpguard.json and deploy/prometheus/smtpguard-rules.yml.

The rules pass Debian's ``promtool check rules`` and ``promtool test rules`` on the
recorded series of ``smtpguard-rules.test.yml`` (every alert tested); the
dashboard's queries are valid PromQL (promtool checks them as recording rules);
and every metric either file names is one a running gateway really exports: read
from a scrape of ``smtpguard serve --metrics-listen`` after traffic that makes
each series appear. Event IDs they name are documented ones.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers import LOOPBACK, GatewayProcess, SmtpSink, free_port, need, wait_port
from tests.reliability.procs import Client, send_one, until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "smtpguard-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "smtpguard-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "smtpguard.json"
# Series Prometheus makes itself for every target, not the gateway.
SCRAPE_SERIES = {"up"}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def _all_exprs() -> list[str]:
    return [r["expr"] for r in _rules()] + _dashboard_exprs()


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_rules_pass_promtool_check_and_their_recorded_series() -> None:
    r = _promtool("check", "rules", str(RULES))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = _promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_is_there_and_tested() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts == {
        "SmtpguardDown",
        "SmtpguardUpstreamFailing",
        "SmtpguardStoreFailingOpen",
        "SmtpguardRefusalSpike",
    }
    doc = yaml.safe_load(RULE_TESTS.read_text())
    assert doc["rule_files"] == [RULES.name]
    tested = {
        t["alertname"]
        for case in doc["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]  # a test that it fires, not only that it stays quiet
    }
    assert tested == alerts


def test_dashboard_has_the_panels_and_valid_promql(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dash["panels"]}
    for wanted in (
        "Sessions",
        "Messages",
        "Refusals by event ID",
        "Upstream reply latency",
        "State store health",
        "Dedupe suppressions",
    ):
        assert wanted in titles, wanted
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    # promtool parses each query as a recording rule: a syntax error fails the check.
    exprs = _dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = _promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in r.stdout


def test_the_event_ids_named_are_documented() -> None:
    documented = set(re.findall(r"`(SG-[A-Z0-9-]+)`", (ROOT / "docs" / "events.md").read_text()))
    named: set[str] = set()
    for e in _all_exprs():
        named |= set(re.findall(r"SG-[A-Z0-9]+(?:-[A-Z0-9]+)*", e))
    assert named and named <= documented, named - documented


def _scrape(port: int) -> set[str]:
    """The sample names a scrape of the gateway shows."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def test_every_metric_named_is_exported_by_a_running_gateway(tmp_path: Path) -> None:
    used: set[str] = set()
    for e in _all_exprs():
        used |= set(re.findall(r"\b(smtpguard_[a-z0-9_]+|up)\b", e))
    recorded = {r["record"] for r in _rules() if "record" in r}
    for e in _all_exprs():  # recording rules' names: defined in the rules file
        assert set(re.findall(r"\bsmtpguard:[a-z0-9_:]+", e)) <= recorded
    expected = used - SCRAPE_SERIES
    assert {"smtpguard_sessions_open", "smtpguard_reply_latency_seconds_bucket"} <= expected

    sink = SmtpSink(tmp_path)
    mport = free_port()
    gw = GatewayProcess(
        "--upstream",
        sink.address,
        "--workers",
        "2",
        "--max-sessions",
        "1",
        "--metrics-listen",
        f"{LOOPBACK}:{mport}",
        workdir=tmp_path,
    )
    try:
        wait_port(mport)  # the endpoint starts once the workers serve
        assert send_one(gw.port).startswith(b"250")  # sessions, messages, latency
        c = Client(gw.port)
        assert c.reply().startswith(b"220")
        assert c.cmd(b"VRFY root").startswith(b"500")  # a command refused, an event
        # Both workers full (one session each): the next is refused before a session.
        other = Client(gw.port)
        others = [other]
        while other.reply().startswith(b"220"):
            other = Client(gw.port)
            others.append(other)
        for x in [c, *others]:
            x.close()
        sink.stop()  # the next session's upstream connect fails
        with socket.create_connection((LOOPBACK, gw.port), 10) as s:
            assert s.recv(512).startswith(b"421")
        missing: set[str] = set()

        def all_exported() -> bool:
            nonlocal missing
            missing = expected - _scrape(mport)
            return not missing

        try:
            until(all_exported, 20, "every metric in the scrape")
        except AssertionError:
            raise AssertionError(f"not exported by the gateway: {sorted(missing)}") from None
    finally:
        gw.stop()
        sink.stop()
