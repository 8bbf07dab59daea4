"""Batched PrometheusMetrics against prometheus_client's own observe(), for
tests/ops/test_metrics_prom.py. Run as ``python -m tests.ops.metrics_batch``: its own
process, because the multiprocess setup is process-wide. Exits non-zero (with an
assertion message) if anything differs."""

from __future__ import annotations

import sys

from smtpguard.gateway import metrics_prom


def samples(directory: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def main() -> int:
    directory = metrics_prom.setup()
    from prometheus_client import Histogram

    metrics = metrics_prom.PrometheusMetrics()
    assert metrics._batch_latency, "latency batching fell back to observe()"
    reference = Histogram(
        "reference_seconds",
        "observe() one by one",
        buckets=metrics_prom.LATENCY_BUCKETS,
        registry=None,
    )
    # Exact bucket bounds, values between them, beyond the last bound, and zero.
    values = [0.0, 0.0005, 0.0006, 0.001, 0.0024, 0.0025, 0.3, 1.0, 29.9, 30.0, 31.0, 400.0]
    for _ in range(3):
        for v in values:
            metrics.reply_latency(v)
            reference.observe(v)
    metrics.session_opened()
    metrics.session_opened()
    metrics.session_refused("rate-limit")
    metrics.policy_event("SG-CMD-BLOCKED")

    before = samples(directory)
    assert not any(k[0].startswith("smtpguard_") and v for k, v in before.items()), (
        f"published before flush: {before}"
    )
    metrics.flush()
    metrics.flush()  # a second flush adds nothing
    after = samples(directory)

    def hist(prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (k[0].replace(prefix, "h"), k[1]): v
            for k, v in after.items()
            if k[0].startswith(prefix) and not k[0].endswith("_created")
        }

    got = hist("smtpguard_reply_latency_seconds")
    want = hist("reference_seconds")
    assert got and got.keys() == want.keys(), (got, want)
    for k in want:
        assert abs(got[k] - want[k]) < 1e-9, (k, got[k], want[k])
    assert after[("smtpguard_sessions_total", ())] == 2
    assert after[("smtpguard_sessions_open", ())] == 2
    assert after[("smtpguard_sessions_refused_total", (("reason", "rate-limit"),))] == 1
    assert after[("smtpguard_policy_events_total", (("id", "SG-CMD-BLOCKED"),))] == 1
    metrics_prom.cleanup(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
