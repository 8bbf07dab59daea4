from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import GatewayProcess, SmtpSink


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[object]:
    started: list[GatewayProcess] = []

    def make(*args: str) -> GatewayProcess:
        g = GatewayProcess(*args, workdir=tmp_path)
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


@pytest.fixture
def gateway(sink: SmtpSink, gateway_factory, tmp_path: Path) -> GatewayProcess:  # type: ignore[no-untyped-def]
    return gateway_factory(
        "--upstream",
        sink.address,
        "--protocol-log",
        str(tmp_path / "proto.log"),
        "--hostname",
        "gw.example.test",
    )
