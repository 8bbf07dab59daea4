"""Worker processes sharing one listening port (SO_REUSEPORT), and their supervisor.

The parent binds every listening socket itself, so a bad ``--listen`` fails once,
with one line, before anything forks; each worker gets its own socket and the kernel
spreads connections across them. A port another process already listens on is
refused even when that process set SO_REUSEPORT too: a second instance must never
share the port with the first (two policies answering one port at random).

Start-up: every child reports over a pipe that it serves, or one line saying why it
cannot. The parent calls ``on_ready`` (the CLI prints its start-up block) only once
all children are serving; if one fails, the others are stopped and
:class:`StartupFailed` carries that line.

Later, a child that dies is logged with its reason (exit status or signal) as
``SG-WORKER-EXITED`` and forked again on the same socket (``SG-WORKER-RESTARTED``)
after 1, 2, 4 ... up to 30 seconds; the back-off starts over once a child has served
for ``STABLE_AFTER`` seconds. A child that dies ``MAX_QUICK_DEATHS`` times in a row
stops the whole service with exit status 1 (the service manager, e.g. systemd's
``Restart=on-failure``, takes over from there).

Stop: SIGTERM or SIGINT make the parent call ``on_stop`` once and send SIGTERM to
the workers (each drains its own sessions); *helpers* (the built-in mailbox) get
theirs only when every worker has exited, so a transaction in flight finishes in
every topology. A second SIGTERM or SIGINT during the drain is passed on as
``CUT_SIGNAL`` (SIGUSR2, never a second SIGTERM, which could merge with the first in
a worker that has not run yet), which makes each worker cut its sessions at once. Every child
ignores SIGINT: a Ctrl-C reaches the whole process group, and the parent alone
decides what it means. SIGHUP and SIGUSR1 are forwarded to the workers as they are.

Each child keeps its end of the start-up pipe (:class:`ToParent`): once it serves
it says so; when it stops having cut sessions short it says how many, and the
parent reports the total (``on_cut``) once every worker has exited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

log = logging.getLogger("smtpguard.gateway")

# Event IDs of the supervisor's lines (docs/events.md): a child that died when it was
# not told to stop (restarted, or the service stopped), and a child forked again.
WORKER_EXITED: Final = "SG-WORKER-EXITED"
WORKER_RESTARTED: Final = "SG-WORKER-RESTARTED"

# The parent's second stop, to its workers: cut the drain now. A signal of its own,
# not a second SIGTERM: two SIGTERMs sent before a busy worker has run merge into one.
CUT_SIGNAL: Final = signal.SIGUSR2
STABLE_AFTER = 60.0  # seconds of service after which a death is not "quick"
MAX_QUICK_DEATHS = 5
MAX_BACKOFF = 30.0
STARTUP_TIMEOUT = 60.0  # seconds a child has to report that it serves

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}


class StartupFailed(Exception):
    """A child could not start; the message is one line for the user."""


def describe(exc: BaseException) -> str:
    """One line for an exception: ``path: reason`` for OS errors, else type and text."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def bind_listeners(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """Bind ``count`` sockets to the same address, each listening with ``backlog``;
    port 0 picks one port for all.
    OSError (EADDRINUSE) if anything already listens there, SO_REUSEPORT or not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if count > 1 and port != 0:
        # Our sockets set SO_REUSEPORT, so a bind alone would join another process's
        # group: first bind without it, which fails if anyone holds the address.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
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
            s.listen(backlog)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class ToParent:
    """A child's end of its pipe to the supervisor. Calling it says the child serves
    (once); :meth:`cut` says how many sessions its stop cut short."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ready_sent = False

    def __call__(self) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            with contextlib.suppress(OSError):
                os.write(self.fd, b"R\n")

    def cut(self, sessions: int) -> None:
        if sessions:
            with contextlib.suppress(OSError):
                os.write(self.fd, b"C%d\n" % sessions)

    def failed(self, reason: str) -> bool:
        """Before it serves: why it cannot (the parent reports it). False if the
        parent cannot be told (then the child logs it)."""
        if self.ready_sent:
            return False
        try:
            os.write(self.fd, b"E" + reason.encode("utf-8", "replace"))
        except OSError:
            return False
        return True


Ready = ToParent


@dataclass(eq=False)
class Child:
    """One supervised process: ``target(ready)`` runs in it and returns the exit
    status; it calls ``ready()`` once it serves. ``sockets``: the listening sockets
    it keeps (the parent's others are closed in it)."""

    name: str
    target: Callable[[Ready], int]
    sockets: list[socket.socket] = field(default_factory=list)
    helper: bool = False  # stopped after the workers (the built-in mailbox)
    pid: int = 0
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    ready_fd: int = -1  # the parent's end of the child's pipe (ToParent)


def _exit_reason(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by {name}"
    return f"exited with status {code}"


def _child_main(child: Child, inherited: list[socket.socket], wfd: int) -> None:
    """In the forked process: never returns, never lets an exception escape."""
    code = 1
    parent = ToParent(wfd)
    try:
        for s in inherited:
            if s not in child.sockets:
                s.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent passes a stop on
        for sig in (signal.SIGHUP, signal.SIGUSR1, CUT_SIGNAL):  # until the loop handles them
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        code = child.target(parent)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # the reason must reach the administrator
        reason = describe(exc)
        if not parent.failed(reason):
            log.error("%s (pid %d) failed: %s", child.name, os.getpid(), reason)
        log.debug("%s traceback", child.name, exc_info=exc)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class Supervisor:
    def __init__(
        self,
        children: list[Child],
        inherited: list[socket.socket],
        after_fork: Callable[[], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        on_cut: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.children = children
        self.inherited = inherited
        self.after_fork = after_fork
        self.on_exit = on_exit
        self.on_ready = on_ready
        self.on_stop = on_stop
        self.on_cut = on_cut
        self.stopping = False
        self.cutting = False  # a second stop signal: the workers cut their sessions
        self.sessions_cut = 0  # what the exited workers reported
        self.status = 0

    def _spawn(self, child: Child) -> None:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            for other in self.children:  # the other children's pipes are not ours
                if other.ready_fd >= 0:
                    os.close(other.ready_fd)
            _child_main(child, self.inherited, wfd)
        os.close(wfd)
        child.pid = pid
        child.started = time.monotonic()
        child.restart_at = None
        child.ready_fd = rfd
        os.set_blocking(rfd, False)

    def _await_ready(self) -> str | None:
        """Wait for every child's report; the first failure's line, or None."""
        pending = {c.ready_fd: c for c in self.children}
        deadline = time.monotonic() + STARTUP_TIMEOUT
        failure: str | None = None
        while pending and failure is None:
            left = deadline - time.monotonic()
            readable = select.select(list(pending), [], [], max(left, 0))[0] if left > 0 else []
            if not readable:
                names = ", ".join(c.name for c in pending.values())
                failure = f"{names}: not serving after {STARTUP_TIMEOUT:.0f} s"
                break
            for fd in readable:
                child = pending.pop(fd)
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    pending[fd] = child
                    continue
                if data.startswith(b"R"):
                    continue
                reason = data[1:].decode("utf-8", "replace") if data else ""
                if not reason:
                    _, st = os.waitpid(child.pid, 0)
                    self._reaped(child)
                    reason = f"{_exit_reason(st)} during start-up"
                failure = f"{child.name}: {reason}"
                break
        if failure is not None:
            for c in self.children:
                self._close_pipe(c)
        return failure

    def _close_pipe(self, child: Child) -> None:
        if child.ready_fd >= 0:
            os.close(child.ready_fd)
            child.ready_fd = -1

    def _reaped(self, child: Child) -> None:
        if self.on_exit is not None:
            self.on_exit(child.pid)
        child.pid = 0
        if child.ready_fd >= 0:  # what it said before exiting: sessions it cut
            data = b""
            with contextlib.suppress(OSError):
                while chunk := os.read(child.ready_fd, 4096):
                    data += chunk
            for word in data.split():
                if word.startswith(b"C") and word[1:].isdigit():
                    self.sessions_cut += int(word[1:])
            self._close_pipe(child)

    def _signal(self, sig: int, helpers: bool = False) -> None:
        for c in self.children:
            if c.pid and c.helper == helpers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.pid, sig)

    def _stop(self) -> None:
        if self.stopping:
            if not self.cutting:  # a second stop signal: the workers cut at once
                self.cutting = True
                self._signal(CUT_SIGNAL)
            return
        self.stopping = True
        for c in self.children:
            c.restart_at = None
        if self.on_stop is not None:
            self.on_stop()
        self._signal(signal.SIGTERM)
        # No new connection may wait in a backlog nobody will accept from.
        for s in self.inherited:
            s.close()

    def _died(self, child: Child, st: int) -> None:
        pid = child.pid
        self._reaped(child)
        code = os.waitstatus_to_exitcode(st)
        reason = _exit_reason(st)
        # (worker_pid: a JSON line's own ``pid`` is the supervisor's)
        fields = {"event": WORKER_EXITED, "worker": child.name, "worker_pid": pid, "reason": reason}
        if self.stopping:
            if code not in (0, -signal.SIGTERM):
                log.error(
                    "%s %s %s while stopping", WORKER_EXITED, child.name, reason, extra=fields
                )
                self.status = 1
            return
        now = time.monotonic()
        child.quick_deaths = child.quick_deaths + 1 if now - child.started < STABLE_AFTER else 1
        if child.quick_deaths >= MAX_QUICK_DEATHS:
            log.error(
                "%s %s %s, %d times in a row: stopping the service",
                WORKER_EXITED,
                child.name,
                reason,
                child.quick_deaths,
                extra={**fields, "deaths_in_a_row": child.quick_deaths},
            )
            self.status = 1
            self._stop()
            return
        delay = min(MAX_BACKOFF, 2.0 ** (child.quick_deaths - 1))
        log.error(
            "%s %s %s; restarting it in %g s",
            WORKER_EXITED,
            child.name,
            reason,
            delay,
            extra={**fields, "restart_in": delay},
        )
        child.restart_at = now + delay

    def _reap_all(self) -> None:
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for c in self.children:
                if c.pid == pid:
                    self._died(c, st)

    def run(self) -> int:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            return self._run()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _run(self) -> int:
        for child in self.children:
            self._spawn(child)
        failure = self._await_ready()
        if failure is not None:
            self.stopping = True
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGTERM, helpers=True)
            for c in self.children:
                if c.pid:
                    os.waitpid(c.pid, 0)
                    self._reaped(c)
            for s in self.inherited:
                s.close()
            raise StartupFailed(failure)
        if self.after_fork is not None:  # threads only now: never fork a threaded process
            self.after_fork()
        if self.on_ready is not None:
            self.on_ready()
        while True:
            alive = [c for c in self.children if c.pid]
            if self.stopping and not any(not c.helper for c in alive):
                if self.on_cut is not None and (self.sessions_cut or self.cutting):
                    self.on_cut(self.sessions_cut, self.cutting)
                    self.on_cut = None
                if not alive:
                    return self.status
                self._signal(signal.SIGTERM, helpers=True)
            due = [c.restart_at for c in self.children if c.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else 3600.0
            info = signal.sigtimedwait(_SIGNALS, timeout)
            if info is None:
                now = time.monotonic()
                for c in self.children:
                    if c.restart_at is not None and c.restart_at <= now and not self.stopping:
                        self._spawn(c)  # it reports in the log only, cuts through the pipe
                        log.warning(
                            "%s %s restarted (pid %d)",
                            WORKER_RESTARTED,
                            c.name,
                            c.pid,
                            extra={
                                "event": WORKER_RESTARTED,
                                "worker": c.name,
                                "worker_pid": c.pid,
                            },
                        )
                continue
            sig = info.si_signo
            if sig == signal.SIGCHLD:
                self._reap_all()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self._stop()
            elif not self.stopping:  # SIGHUP, SIGUSR1
                self._signal(sig)


def run_workers(
    children: list[Child],
    inherited: list[socket.socket],
    after_fork: Callable[[], None] | None = None,
    on_exit: Callable[[int], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    on_cut: Callable[[int, bool], None] | None = None,
) -> int:
    """Supervise ``children`` (see the module docstring); returns the exit status,
    0 after a clean stop. ``inherited``: every listening socket of the parent, each
    closed in the children that do not keep it. ``on_cut(sessions, second_signal)``:
    once every worker has exited, if their stop cut sessions short. Raises
    :class:`StartupFailed` if a child cannot start."""
    return Supervisor(children, inherited, after_fork, on_exit, on_ready, on_stop, on_cut).run()
