"""``[gateway] listen_backlog`` (``--listen-backlog``) reaches listen(2): the kernel
reports a listening socket's backlog as its Send-Q (``ss -l``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.peers import GatewayProcess, SmtpSink, need


def _backlog(port: int) -> int:
    out = subprocess.run(
        [need("ss"), "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    # State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
    return int(out[2])


def test_the_flag_sets_the_listen_backlog(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    gw = GatewayProcess("--upstream", sink.address, "--listen-backlog", "77", workdir=tmp_path)
    try:
        assert _backlog(gw.port) == 77
    finally:
        gw.stop()
        sink.stop()


def test_the_file_sets_it_and_the_default_is_1024(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[gateway]\nlisten_backlog = 33\n")
    gw = GatewayProcess("--config", str(cfg), "--upstream", sink.address, workdir=tmp_path)
    plain = GatewayProcess("--upstream", sink.address, workdir=tmp_path)
    try:
        assert _backlog(gw.port) == 33
        assert _backlog(plain.port) == 1024
    finally:
        gw.stop()
        plain.stop()
        sink.stop()
