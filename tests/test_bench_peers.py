"""A small share of bench/peers.py in CI: the relays CI has (smtp-sink, HAProxy, the
gateway), a few messages each, loopback only. nginx and Haraka are installed on
demand by the benchmark itself and are not part of this test."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytest
from bench import peers


def test_a_short_run_counts_every_message_at_each_sink() -> None:
    args = argparse.Namespace(
        messages=40,
        sessions=4,
        size=1000,
        rounds=1,
        warmup=10,
        latency_sessions=3,
        idle=20,
        big_mb=1,
        gateway_env=peers.gateway_env(None),
        gateway_build="test",
        no_protocol_log=False,
    )
    with tempfile.TemporaryDirectory(prefix="smtpguard-peers-") as tmp:
        relays = []
        try:
            for name in ("direct", "haproxy", "mailguard-w1"):
                relays.append(peers.start_relay(name, Path(tmp), args, []))
            peers.measure(relays, args)
            rows = peers.summary(relays, args)
            # 10 + 40 + 3 lock-step + 1 MB warm-up + 1 MB message, all delivered
            assert [r["delivered"] for r in rows.values()] == [55, 55, 55]
            # CPU is read in clock ticks (10 ms): HAProxy's 50 messages may use less
            # than one, the gateway's (about 250 us each) several.
            assert rows["haproxy"]["cpu_us_per_msg"] >= 0
            assert rows["mailguard-w1"]["cpu_us_per_msg"] > 0
            assert "idle_kib_per_session" in rows["mailguard-w1"]
            assert Path(tmp, "mailguard-w1.log").stat().st_size > 0  # the IMS log is on
            relays[1].sink.expected += 1  # one message more than was sent: a loss
            with pytest.raises(peers.LostMessages, match="received 55 of 56"):
                relays[1].sink.check("haproxy", wait=0.5)
        finally:
            for relay in relays:
                peers.stop_relay(relay)
