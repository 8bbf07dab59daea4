"""``serve``'s composition root: settings to a running gateway.

It checks everything a worker needs (:mod:`~smtpguard.gateway.startup`), binds the
listeners, forks the workers (:mod:`~smtpguard.gateway.workers`) or runs one in
this process, and in each builds the :class:`~smtpguard.gateway.server.Gateway`
with its protocol log, metrics, TLS contexts, shared store and reloader
(:mod:`~smtpguard.gateway.reload`). It imports every part; no part imports it.

``[gateway]`` keys reach the gateway through :class:`GatewayConfig` by name
(:func:`~smtpguard.gateway.reload.gateway_fields`): a key the schema declares and
``GatewayConfig`` has a field for needs no line here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable

from smtpguard.applog import setup_logging
from smtpguard.config import keys
from smtpguard.config.load import Settings, effective_log_level, split_hostport
from smtpguard.errors import CliError
from smtpguard.gateway import lifecycle, metrics_prom
from smtpguard.gateway.flags import load_settings
from smtpguard.gateway.metrics_prom import PrometheusMetrics
from smtpguard.gateway.reload import gateway_fields, reloader
from smtpguard.gateway.server import Gateway, GatewayConfig
from smtpguard.gateway.startblock import print_banner, upstreams_shown
from smtpguard.gateway.startup import (
    check_any_reachable,
    create_files,
    metrics_setup,
    problems,
    remove_pid_file,
    tls_contexts,
    write_pid_file,
)
from smtpguard.gateway.tls import TlsContexts
from smtpguard.gateway.workers import (
    Child,
    StartupFailed,
    ToParent,
    bind_listeners,
    describe,
    run_workers,
)
from smtpguard.logs import open_protocol_log
from smtpguard.sink import start_sink
from smtpguard.state.attach import attach


def run(args: argparse.Namespace) -> int:
    """Check everything a worker needs, bind, start the workers, print the start-up
    block once they all serve; then supervise them until a signal stops the service
    (workers.py). Start-up problems are on stderr before the block, one line each:
    all that :func:`~smtpguard.gateway.startup.problems` finds (as ``check-config``
    prints them), else the first the host shows (an address in use, the upstream
    not answering)."""
    # Until the event loop handles it, a SIGHUP (reload) must not kill the process;
    # forked workers inherit this.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = load_settings(args)
    setup_logging(effective_log_level(settings, sys.stderr.isatty()), settings.gateway.log_format)
    found = problems(settings)  # the same list check-config prints: all at once
    if found:
        raise CliError("\n".join(found))
    lhost, lport = settings.listen
    upstream = settings.upstream
    sink_sock = None
    down: list[str] = []
    if upstream is None:
        sink_sock = bind_listeners("127.0.0.1", 0, 1, settings.gateway.listen_backlog)[0]
        upstream = ("127.0.0.1", sink_sock.getsockname()[1])
        target = f"built-in mailbox at 127.0.0.1:{upstream[1]}"
    else:
        down = check_any_reachable(settings, settings.upstreams)
        target = upstreams_shown(settings)
    socks = _bind(settings, ("gateway", "listen"), lhost, lport)
    tls_socks: list[socket.socket] = []
    if settings.tls.implicit_listen:
        thost, tport = split_hostport(settings.tls.implicit_listen)
        tls_socks = _bind(settings, ("tls", "implicit_listen"), thost, tport)
    tls = tls_contexts(settings, upstream[0])
    metrics_dir = metrics_setup(settings)
    try:
        # Last: a start that fails before here leaves no file behind.
        create_files(settings)
    except CliError:
        if metrics_dir is not None:
            metrics_prom.cleanup(metrics_dir)
        raise
    config = GatewayConfig(
        listen_host=lhost,
        listen_port=lport,
        upstream_host=upstream[0],
        upstream_port=upstream[1],
        upstreams=settings.upstreams,
        **gateway_fields(GatewayConfig, settings),
    )
    host, port = socks[0].getsockname()[:2]
    implicit = tls_socks[0].getsockname()[:2] if tls_socks else None

    def ready() -> None:
        print_banner(settings, host, port, target, sink_sock is not None, implicit, down)

    def stopped(code: int) -> int:
        lifecycle.stopped()
        return code

    pid_file = settings.gateway.pid_file
    try:
        if pid_file:
            write_pid_file(pid_file)  # the main process: signals for all go to it
        if settings.workers == 1:
            # One process: the built-in mailbox shares the worker's event loop and is
            # closed after the drain.
            if metrics_dir is not None:
                _metrics_serve(settings)  # no fork: the endpoint lives in this process
            _use_uvloop()
            tls_sock = tls_socks[0] if tls_socks else None
            try:
                serve = _serve(
                    args,
                    settings,
                    config,
                    socks[0],
                    sink_sock,
                    tls,
                    tls_sock,
                    ready,
                    lifecycle.draining,
                    lifecycle.cut,
                )
                code = asyncio.run(serve)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                lifecycle.failed(describe(exc))
                return 1
            return stopped(code)

        def worker(index: int) -> Callable[[ToParent], int]:
            def main(parent: ToParent) -> int:
                _use_uvloop()
                mine_tls = tls_socks[index] if tls_socks else None
                # The parent reports the sessions cut, summed over the workers.
                serve = _serve(
                    args,
                    settings,
                    config,
                    socks[index],
                    None,
                    tls,
                    mine_tls,
                    parent,
                    on_cut=lambda n, _reason: parent.cut(n),
                )
                return asyncio.run(serve)

            return main

        children = [
            Child(f"worker {i}", worker(i), sockets=[s, *tls_socks[i : i + 1]])
            for i, s in enumerate(socks)
        ]
        if sink_sock is not None:
            # Its own process, stopped after the workers: not tied to any worker's life.
            children.append(
                Child(
                    "built-in mailbox",
                    lambda ready: _mailbox(settings.gateway.maildir, sink_sock, ready),
                    sockets=[sink_sock],
                    helper=True,
                )
            )
        try:
            code = run_workers(
                children,
                [*socks, *tls_socks, *([sink_sock] if sink_sock is not None else [])],
                after_fork=(lambda: _metrics_serve(settings)) if metrics_dir else None,
                on_exit=_metrics_worker_exited if metrics_dir else None,
                on_ready=ready,
                on_stop=lifecycle.draining,
                on_cut=lambda n, second: lifecycle.cut(
                    n, lifecycle.SECOND_SIGNAL if second else lifecycle.GRACE_OVER
                ),
            )
        except StartupFailed as exc:
            lifecycle.failed(str(exc))
            return 1
        return stopped(code)
    finally:
        if metrics_dir is not None:
            metrics_prom.cleanup(metrics_dir)
        if pid_file:
            remove_pid_file(pid_file)


def _bind(settings: Settings, loc: tuple[str, ...], host: str, port: int) -> list[socket.socket]:
    try:
        return bind_listeners(host, port, settings.workers, settings.gateway.listen_backlog)
    except OSError as exc:
        where = settings.origins.name(loc, keys.get(settings.file, loc))
        raise CliError(f"{where}: cannot listen: {exc.strerror or exc}") from None


def _mailbox(maildir: str, sock: socket.socket, ready: Callable[[], None]) -> int:
    """The built-in mailbox's own process: serves until SIGTERM (from the parent,
    once every worker has drained)."""

    async def main() -> int:
        server, _, _ = await start_sink("127.0.0.1", 0, maildir, sock=sock)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        ready()
        await stop.wait()
        server.close()
        return 0

    _use_uvloop()
    return asyncio.run(main())


def _use_uvloop() -> None:
    if os.environ.get("SMTPGUARD_NO_UVLOOP"):
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(
    args: argparse.Namespace,
    settings: Settings,
    config: GatewayConfig,
    sock: socket.socket,
    sink_sock: socket.socket | None,
    tls: TlsContexts | None = None,
    tls_sock: socket.socket | None = None,
    ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    on_cut: Callable[[int, str], None] | None = None,
) -> int:
    """One gateway until a stop signal. With ``on_stop`` it is the only process and
    answers SIGTERM and SIGINT itself; without, it is a worker: SIGINT goes to the
    supervisor, which passes the stop on as SIGTERM. ``on_cut(sessions, reason)``:
    the sessions its drain cut short, if any."""
    sink_server = None
    if sink_sock is not None:
        maildir = settings.gateway.maildir
        sink_server, _, _ = await start_sink("127.0.0.1", 0, maildir, sock=sink_sock)
    path, fmt = settings.protocol_log.path, settings.protocol_log.format
    plog = open_protocol_log(path, fmt) if path else None
    metrics = PrometheusMetrics() if settings.metrics_listen is not None else None
    gateway = Gateway(config, settings.policy, plog, metrics=metrics, access=settings.access)
    gateway.tls = tls
    gateway.upstream_proxy = settings.gateway.upstream_proxy_protocol
    shared = attach(gateway, settings)  # None: no rule needs the shared store
    if args.config is not None:
        gateway.reloader = reloader(args, settings, gateway)
    await gateway.start(sock)
    if tls_sock is not None and tls is not None and tls.server is not None:
        await gateway.start_implicit_tls(tls_sock, tls.server)
    signals = (signal.SIGTERM, signal.SIGINT) if on_stop is not None else (signal.SIGTERM,)
    cut = await gateway.serve_until_signalled(on_stop, signals, ready)
    if on_cut is not None and (cut or gateway.cut_reason == lifecycle.SECOND_SIGNAL):
        on_cut(cut, gateway.cut_reason)
    if shared is not None:
        await shared.close()
    if sink_server is not None:
        sink_server.close()
        await sink_server.wait_closed()
    return 0


def _metrics_serve(settings: Settings) -> None:
    assert settings.metrics_listen is not None
    metrics_prom.serve(*settings.metrics_listen)


def _metrics_worker_exited(pid: int) -> None:
    metrics_prom.worker_exited(pid)
