"""Worker processes sharing one listening port (SO_REUSEPORT).

The parent binds every listening socket itself, so a bad ``--listen`` fails once,
with one line, before anything forks; each worker gets its own socket and the kernel
spreads connections across them. The parent forwards SIGTERM/SIGINT to the workers
(each drains its own sessions) and exits when all of them have; it forwards SIGHUP
as is (each worker re-reads the config file itself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable


def bind_listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """Bind ``count`` sockets to the same address; port 0 picks one port for all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            port = s.getsockname()[1]
            s.listen(1024)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def run_workers(
    socks: list[socket.socket],
    worker: Callable[[socket.socket, int], int],
    parent_close: list[socket.socket] | None = None,
    after_fork: Callable[[], None] | None = None,
    on_exit: Callable[[int], None] | None = None,
) -> int:
    """Fork one process per socket running ``worker(sock, index)``; wait for all.
    ``parent_close``: more listening sockets the workers own, closed in the parent
    after forking (a listener left open here would get connections nobody accepts)."""
    pids: list[int] = []
    for index, sock in enumerate(socks):
        pid = os.fork()
        if pid == 0:  # child
            for other in socks:
                if other is not sock:
                    other.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = worker(sock, index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    for sock in [*socks, *(parent_close or [])]:
        sock.close()
    if after_fork is not None:  # threads only now: never fork a threaded process
        after_fork()

    def forward(signum: int, _frame: object) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def forward_hup(signum: int, _frame: object) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward_hup)
    status = 0
    for pid in pids:
        while True:
            try:
                _, st = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
        if on_exit is not None:
            on_exit(pid)
        code = os.waitstatus_to_exitcode(st)
        if code not in (0, -signal.SIGTERM):
            status = 1
    return status
