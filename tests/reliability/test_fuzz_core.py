"""A share of bench/fuzz_core.py in CI: random inputs and event orders into the core.

The invariants are the fuzzer's (no exception, never a 2xx the server did not send,
replies in order, bounded buffers); hypothesis picks the seeds and session lengths
and shrinks a failure to the smallest one. ``python3 bench/fuzz_core.py`` runs a
million inputs on demand (docs/reliability.md).
"""

from __future__ import annotations

import pytest
from bench.fuzz_core import Fuzzer, InvariantError, _Check
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32), events=st.integers(1, 80))
def test_random_sessions_keep_the_invariants(seed: int, events: int) -> None:
    f = Fuzzer(seed)
    for _ in range(5):
        f.session(events)


def test_a_fixed_share_of_inputs() -> None:
    f = Fuzzer(20261202)
    f.run(15_000)
    assert f.relayed > 0 and f.phases["data"] > 0  # the fuzzer reaches the DATA phase


def test_the_checks_catch_a_false_2xx_and_disorder() -> None:
    """The invariants are not vacuous."""
    from smtpguard.core.policy import Policy

    check = _Check(Policy())
    check.server_2xx.add(1)
    check._client_bytes(b"220 mx #1\r\n")  # the greeting
    check._client_bytes(b"250 ok #1\r\n")
    with pytest.raises(InvariantError, match="did not send"):
        check._client_bytes(b"250 invented\r\n")
    check._client_bytes(b"500 x #5\r\n")
    with pytest.raises(InvariantError, match="out of order"):
        check._client_bytes(b"500 x #4\r\n")
