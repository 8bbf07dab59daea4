"""``smtpguard serve``: config file and flags to Settings, then run the gateway."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from smtpguard import __version__
from smtpguard.applog import LOGGER, setup_logging
from smtpguard.config.load import effective_log_level, split_hostport
from smtpguard.core.policy import BannerPolicy, Mode, Policy, Timeouts
from smtpguard.logs import FORMATS, open_protocol_log

if TYPE_CHECKING:
    from smtpguard.config.load import Override, Settings, TlsFiles
    from smtpguard.gateway.server import Gateway, Reload
    from smtpguard.gateway.tls import TlsContexts

TIMEOUT_KEYS = tuple(f.name for f in dataclasses.fields(Timeouts))


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the SMTP inspection gateway",
        description="Listen for SMTP, relay to the upstream server, inspect every byte. "
        "Settings come from --config FILE (see docs/config.md); flags given on the "
        "command line override the file. SIGHUP re-reads the file.",
    )
    # Flags default to None so that only the ones the user gave override the file;
    # the defaults shown in the help are the config schema's.
    p.add_argument("--config", metavar="FILE", help="TOML config file (docs/config.md)")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:2525)",
    )
    p.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        help="the real mail server; default: the built-in mailbox on loopback",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        help="mailguard: the seven RFC 821 commands only (default); "
        "esmtp: ASA-style ESMTP inspection",
    )
    p.add_argument(
        "--banner",
        metavar="generic|pix|pass|TEXT",
        help="greeting policy: generic (default), pix mask, pass, or custom text",
    )
    p.add_argument("--hostname", help="name in the generic banner (default: this host's name)")
    p.add_argument("--protocol-log", metavar="FILE", help="append a protocol log to FILE")
    p.add_argument(
        "--protocol-log-format",
        choices=FORMATS,
        help="ims (Exchange IMS layout, default) or jsonl",
    )
    p.add_argument(
        "--maildir",
        metavar="DIR",
        help="built-in mailbox Maildir (default ./smtpguard-mail)",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        metavar="N",
        help="concurrent sessions; more get 421 (default 1000)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the port with SO_REUSEPORT (default 0: one per CPU core)",
    )
    p.add_argument(
        "--drain-grace",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, time allowed for transactions in flight (default 30)",
    )
    p.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help=f"override a timeout; NAME is one of {', '.join(TIMEOUT_KEYS)}",
    )
    p.add_argument(
        "--starttls",
        choices=["strip", "passthrough", "terminate"],
        help="STARTTLS: strip (default), passthrough (stop inspecting), terminate "
        "(TLS on both sides, inspected in between; needs --tls-cert)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain for terminate")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key, if not in --tls-cert")
    p.add_argument(
        "--tls-listen",
        metavar="HOST:PORT",
        help="also listen with implicit TLS (port 465 style); needs --tls-cert",
    )
    p.add_argument(
        "--proxy-from",
        action="append",
        metavar="NETWORK",
        help="load balancer network whose connections start with a PROXY v1/v2 header (repeatable)",
    )
    p.add_argument(
        "--upstream-proxy",
        choices=["off", "v1", "v2"],
        help="send a PROXY protocol header to the upstream (the real client address)",
    )
    p.add_argument(
        "--xclient",
        action="store_const",
        const=True,
        help="tell the server the real client address with XCLIENT (Postfix)",
    )
    p.add_argument(
        "--xclient-fail-open",
        action="store_const",
        const=True,
        help="if the server refuses XCLIENT, carry on with the client seen as the "
        "gateway's address instead of refusing it with 421 (see docs/security.md)",
    )
    lab = p.add_argument_group("lab emulation (never in production)")
    lab.add_argument(
        "--emulate",
        choices=["pix"],
        help="reproduce PIX 6.x Mailguard faithfully: masked banner, refused verbs "
        "rewritten and passed on, one command at a time",
    )
    lab.add_argument(
        "--emulate-rewrite",
        choices=["noop", "xxxx"],
        help="how --emulate pix rewrites a refused verb: noop (6.x, default) or xxxx (7.x)",
    )
    lab.add_argument(
        "--emulate-bug",
        choices=["split-eod"],
        help="with --emulate pix, reproduce CSCds90792: an end of data split across "
        "TCP segments is never passed on (senders time out and re-send)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics here (all workers summed)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="application log on stderr: text (default) or JSON lines",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="application log level on stderr (default: warning; info, one line per "
        "session, when stderr is a terminal)",
    )
    p.set_defaults(func=run)


# flag attribute -> (key path in the config file, flag as the user spells it)
_FLAG_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "listen": (("gateway", "listen"), "--listen"),
    "upstream": (("gateway", "upstream"), "--upstream"),
    "mode": (("mode",), "--mode"),
    "hostname": (("hostname",), "--hostname"),
    "protocol_log": (("protocol_log", "path"), "--protocol-log"),
    "protocol_log_format": (("protocol_log", "format"), "--protocol-log-format"),
    "maildir": (("gateway", "maildir"), "--maildir"),
    "max_sessions": (("gateway", "max_sessions"), "--max-sessions"),
    "workers": (("gateway", "workers"), "--workers"),
    "drain_grace": (("gateway", "drain_grace"), "--drain-grace"),
    "log_level": (("gateway", "log_level"), "--log-level"),
    "log_format": (("gateway", "log_format"), "--log-format"),
    "metrics_listen": (("gateway", "metrics_listen"), "--metrics-listen"),
    "proxy_from": (("access", "proxy_protocol_from"), "--proxy-from"),
    "upstream_proxy": (("gateway", "upstream_proxy_protocol"), "--upstream-proxy"),
    "starttls": (("starttls",), "--starttls"),
    "tls_cert": (("tls", "certfile"), "--tls-cert"),
    "tls_key": (("tls", "keyfile"), "--tls-key"),
    "tls_listen": (("tls", "implicit_listen"), "--tls-listen"),
    "xclient": (("xclient",), "--xclient"),
    "xclient_fail_open": (("xclient_fail_open",), "--xclient-fail-open"),
    "emulate_rewrite": (("emulation", "rewrite"), "--emulate-rewrite"),
}


def overrides(args: argparse.Namespace) -> list[Override]:
    """The flags the user gave, as (config key path, value, flag) overrides."""
    from smtpguard.cli import CliError

    out: list[Override] = []
    for attr, (keypath, flag) in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append((keypath, value, flag))
    if args.emulate == "pix":
        out.append((("emulation", "pix"), True, "--emulate"))
    if args.emulate_bug == "split-eod":
        if args.emulate != "pix":
            raise CliError("--emulate-bug: only with --emulate pix")
        out.append((("emulation", "split_eod_bug"), True, "--emulate-bug"))
    if args.banner is not None:
        banner_names = {b.value for b in BannerPolicy} - {"custom"}
        if args.banner in banner_names:
            banner, text = args.banner, ""
        else:
            if not args.banner.strip() or any(c in args.banner for c in "\r\n\0"):
                raise CliError("--banner: custom text must be one non-empty line")
            banner, text = "custom", args.banner.strip()
        out.append((("banner",), banner, "--banner"))
        out.append((("banner_text",), text, "--banner"))
    for item in args.timeout:
        name, sep, value = item.partition("=")
        if not sep or name not in TIMEOUT_KEYS:
            raise CliError(
                f"--timeout {item!r}: expected NAME=SECONDS with NAME one of "
                f"{', '.join(TIMEOUT_KEYS)}"
            )
        try:
            seconds: object = float(value)
        except ValueError:
            seconds = value
        out.append((("timeouts", name), seconds, f"--timeout {name}"))
    return out


def load_settings(args: argparse.Namespace) -> Settings:
    """The config file (if any) with the command-line overrides; CliError if invalid."""
    from smtpguard.cli import CliError
    from smtpguard.config.load import load
    from smtpguard.errors import ConfigError

    try:
        return load(args.config, overrides(args))
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def build_policy(args: argparse.Namespace) -> Policy:
    return load_settings(args).policy


def run(args: argparse.Namespace) -> int:
    """Check everything a worker needs, bind, start the workers, print the start-up
    block once they all serve; then supervise them until a signal stops the service
    (workers.py). A start-up problem is one line on stderr before the block."""
    from smtpguard.cli import CliError
    from smtpguard.gateway.server import GatewayConfig
    from smtpguard.gateway.workers import Child, StartupFailed, bind_listeners, run_workers

    # Until the event loop handles it, a SIGHUP (reload) must not kill the process;
    # forked workers inherit this.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = load_settings(args)
    setup_logging(effective_log_level(settings, sys.stderr.isatty()), settings.log_format)
    _check_files(settings)
    from smtpguard.state.attach import prepare_for

    prepare_for(settings)  # the shared store's database, before any fork
    metrics_dir = _metrics_setup(settings)
    lhost, lport = settings.listen
    upstream = settings.upstream
    sink_sock = None
    if upstream is None:
        sink_sock = bind_listeners("127.0.0.1", 0, 1)[0]
        upstream = ("127.0.0.1", sink_sock.getsockname()[1])
        target = f"built-in mailbox at 127.0.0.1:{upstream[1]}"
    else:
        _check_reachable(*upstream)
        target = f"{upstream[0]}:{upstream[1]}"
    try:
        socks = bind_listeners(lhost, lport, settings.workers)
    except OSError as exc:
        listen = f"{lhost}:{lport}"
        raise CliError(f"--listen {listen}: cannot listen: {exc.strerror or exc}") from None
    tls_socks: list[socket.socket] = []
    if settings.tls.implicit_listen:
        thost, tport = split_hostport(settings.tls.implicit_listen)
        try:
            tls_socks = bind_listeners(thost, tport, settings.workers)
        except OSError as exc:
            raise CliError(
                f"--tls-listen {settings.tls.implicit_listen}: cannot listen: {exc.strerror or exc}"
            ) from None
    config = GatewayConfig(
        listen_host=lhost,
        listen_port=lport,
        upstream_host=upstream[0],
        upstream_port=upstream[1],
        max_sessions=settings.max_sessions,
        drain_grace=settings.drain_grace,
    )
    tls = _tls_contexts(settings, upstream[0], args)
    host, port = socks[0].getsockname()[:2]
    implicit = tls_socks[0].getsockname()[:2] if tls_socks else None

    def ready() -> None:
        _print_banner(settings, host, port, target, sink_sock is not None, implicit)

    def stopping() -> None:
        print("smtpguard: draining sessions...", file=sys.stderr, flush=True)

    def stopped(code: int) -> int:
        print("smtpguard: stopped", file=sys.stderr, flush=True)
        return code

    try:
        if settings.workers == 1:
            # One process: the built-in mailbox shares the worker's event loop and is
            # closed after the drain.
            if metrics_dir is not None:
                _metrics_serve(settings)  # no fork: the endpoint lives in this process
            _use_uvloop()
            tls_sock = tls_socks[0] if tls_socks else None
            try:
                serve = _serve(
                    args, settings, config, socks[0], sink_sock, tls, tls_sock, ready, stopping
                )
                code = asyncio.run(serve)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                print(f"smtpguard: cannot serve: {_describe(exc)}", file=sys.stderr, flush=True)
                return 1
            return stopped(code)

        def worker(index: int) -> Callable[[Callable[[], None]], int]:
            def main(ready: Callable[[], None]) -> int:
                _use_uvloop()
                mine_tls = tls_socks[index] if tls_socks else None
                return asyncio.run(
                    _serve(args, settings, config, socks[index], None, tls, mine_tls, ready)
                )

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
                    lambda ready: _mailbox(settings.maildir, sink_sock, ready),
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
                on_stop=stopping,
            )
        except StartupFailed as exc:
            print(f"smtpguard: cannot serve: {exc}", file=sys.stderr, flush=True)
            return 1
        return stopped(code)
    finally:
        if metrics_dir is not None:
            from smtpguard.gateway import metrics_prom

            metrics_prom.cleanup(metrics_dir)


def _describe(exc: BaseException) -> str:
    from smtpguard.gateway.workers import describe

    return describe(exc)


def _check_files(settings: Settings) -> None:
    """The protocol log and the built-in mailbox must be writable: checked before
    anything listens, so the failure is one line and nothing half-starts."""
    import mailbox

    from smtpguard.cli import CliError

    if settings.protocol_log:
        try:
            open_protocol_log(settings.protocol_log, settings.protocol_log_format).flush()
        except OSError as exc:
            raise CliError(
                f"--protocol-log {settings.protocol_log}: cannot open: {exc.strerror or exc}"
            ) from None
    if settings.upstream is None:
        try:
            mailbox.Maildir(settings.maildir, create=True)
            probe = os.path.join(settings.maildir, "tmp", f".smtpguard-check-{os.getpid()}")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise CliError(
                f"--maildir {settings.maildir}: cannot store mail there: {exc.strerror or exc}"
            ) from None


def _mailbox(maildir: str, sock: socket.socket, ready: Callable[[], None]) -> int:
    """The built-in mailbox's own process: serves until SIGTERM (from the parent,
    once every worker has drained)."""

    async def main() -> int:
        from smtpguard.sink import start_sink

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
    config: Any,
    sock: socket.socket,
    sink_sock: socket.socket | None,
    tls: TlsContexts | None = None,
    tls_sock: socket.socket | None = None,
    ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> int:
    from smtpguard.gateway.server import Gateway
    from smtpguard.sink import start_sink

    sink_server = None
    if sink_sock is not None:
        sink_server, _, _ = await start_sink("127.0.0.1", 0, settings.maildir, sock=sink_sock)
    plog = (
        open_protocol_log(settings.protocol_log, settings.protocol_log_format)
        if settings.protocol_log
        else None
    )
    metrics = None
    if settings.metrics_listen is not None:
        from smtpguard.gateway.metrics_prom import PrometheusMetrics

        metrics = PrometheusMetrics()
    gateway = Gateway(config, settings.policy, plog, metrics=metrics, access=settings.access)
    gateway.tls = tls
    gateway.upstream_proxy = settings.upstream_proxy
    from smtpguard.state.attach import attach

    shared = attach(gateway, settings)  # None: no rule needs the shared store
    if args.config is not None:
        gateway.reloader = _reloader(args, settings, gateway)
    await gateway.start(sock)
    if tls_sock is not None and tls is not None and tls.server is not None:
        await gateway.start_implicit_tls(tls_sock, tls.server)
    if ready is not None:
        ready()
    await gateway.serve_until_signalled(on_stop)
    if shared is not None:
        await shared.close()
    if sink_server is not None:
        sink_server.close()
        await sink_server.wait_closed()
    return 0


def _reloader(args: argparse.Namespace, first: Settings, gateway: Gateway) -> Callable[[], Reload]:
    """Re-read the config file with the same command-line overrides. Settings that
    need a new socket or process (listen, workers, upstream, maildir, protocol log,
    the implicit-TLS port) keep their running values; a change to them is reported,
    not applied. Certificates are re-read (renewals need no restart)."""
    from smtpguard.config.load import load
    from smtpguard.gateway.server import Reload
    from smtpguard.state.ratelimit import uses_rate_limit

    fixed = (
        "listen",
        "workers",
        "upstream",
        "maildir",
        "protocol_log",
        "protocol_log_format",
        "state",
        "dedupe",
    )

    def reload() -> Reload:
        new = load(args.config, overrides(args))  # ConfigError: the caller keeps the old
        _reload_tls(gateway, new)  # ConfigError too: nothing was changed yet
        # smtpguard's own logger: it has its own level and does not propagate.
        logging.getLogger(LOGGER).setLevel(effective_log_level(new, sys.stderr.isatty()).upper())
        if new.policy.xclient and new.policy.xclient_fail_open:  # as the start-up block says
            logging.getLogger(LOGGER).warning(fail_open_warning())
        ignored = tuple(k for k in fixed if getattr(new, k) != getattr(first, k))
        if new.tls.implicit_listen != first.tls.implicit_listen:
            ignored += ("tls.implicit_listen",)
        if gateway.rates is None and uses_rate_limit(new.policy):
            ignored += ("a rate-limit check (counts per session until the store is opened)",)
        return Reload(
            policy=new.policy,
            access=new.access,
            max_sessions=new.max_sessions,
            drain_grace=new.drain_grace,
            needs_restart=ignored,
        )

    return reload


def _reload_tls(gateway: Gateway, new: Settings) -> None:
    """Load the (possibly renewed) certificate into the running server context, so
    STARTTLS and the implicit-TLS port both use it for new handshakes, and rebuild
    the upstream side. A file that does not load refuses the whole reload."""
    from smtpguard.errors import ConfigError
    from smtpguard.gateway.tls import client_context, server_context

    tls, t = gateway.tls, new.tls
    if tls is None:
        return
    try:
        if t.certfile and tls.server is not None:
            server_context(t.certfile, t.keyfile)  # check it loads before touching anything
            tls.server.load_cert_chain(t.certfile, t.keyfile)
        client = client_context(t.verify_upstream, t.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{new.source}: {tls_problem(t, exc)}") from None
    gateway.tls = dataclasses.replace(tls, client=client)


def _tls_contexts(
    settings: Settings, upstream_host: str, args: argparse.Namespace | None = None
) -> TlsContexts | None:
    """TLS contexts when STARTTLS is relayed or terminated, loaded once before any
    worker starts so a bad certificate fails at start with one line."""
    from smtpguard.cli import CliError
    from smtpguard.core.policy import StartTls
    from smtpguard.gateway.tls import contexts

    t = settings.tls
    if settings.policy.starttls is StartTls.STRIP and not t.certfile and not t.implicit_listen:
        return None
    try:
        return contexts(t.certfile, t.keyfile, t.verify_upstream, t.cafile, upstream_host)
    except (OSError, ssl.SSLError) as exc:
        given = {
            "certfile": args is not None and args.tls_cert is not None,
            "keyfile": args is not None and args.tls_key is not None,
        }
        problem = tls_problem(t, exc, given)
        raise CliError(f"{settings.source}: {problem}" if settings.source else problem) from None


# TLS file keys -> the flag that sets them (None: config file only).
_TLS_FLAGS = {"certfile": "--tls-cert", "keyfile": "--tls-key", "cafile": None}


def tls_problem(t: TlsFiles, exc: BaseException, given: dict[str, bool] | None = None) -> str:
    """Which TLS file is at fault and what is wrong with it, in one line, for an
    error ``exc`` that loading them raised. ``given`` says which keys came from a
    flag (named as the user typed it) rather than the file (``tls.KEY``)."""
    given = given or {}

    def name(key: str) -> str:
        flag = _TLS_FLAGS[key]
        return flag if flag is not None and given.get(key) else f"tls.{key}"

    files = [(k, getattr(t, k)) for k in ("certfile", "keyfile", "cafile") if getattr(t, k)]
    texts: dict[str, bytes] = {}
    for key, path in files:
        try:
            with open(path, "rb") as f:
                texts[key] = f.read()
        except OSError as err:
            return f"{name(key)} {path}: cannot read: {err.strerror or err}"
    cert = texts.get("certfile", b"")
    if t.certfile and b"-----BEGIN CERTIFICATE-----" not in cert:
        return (
            f"{name('certfile')} {t.certfile}: no PEM certificate in it "
            "(expected a -----BEGIN CERTIFICATE----- block)"
        )
    key_text = texts.get("keyfile", cert)
    key_where = (
        name("keyfile") + f" {t.keyfile}" if t.keyfile else f"{name('certfile')} {t.certfile}"
    )
    if t.certfile and b"PRIVATE KEY-----" not in key_text:
        if t.keyfile:
            return f"{key_where}: no PEM private key in it (expected a PRIVATE KEY block)"
        return (
            f"{key_where}: no private key in it; put the key in the same file or name it "
            "with --tls-key FILE (tls.keyfile)"
        )
    if b"ENCRYPTED" in key_text:
        return (
            f"{key_where}: the private key is encrypted (the gateway needs it without a passphrase)"
        )
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    if "KEY_VALUES_MISMATCH" in str(reason) or "values mismatch" in str(exc):
        return f"{key_where}: the private key does not match the certificate in {t.certfile}"
    if t.cafile and isinstance(exc, ssl.SSLError) and "certfile" not in str(exc).lower():
        try:
            ssl.create_default_context(cafile=t.cafile)
        except (OSError, ssl.SSLError) as err:
            why = getattr(err, "reason", None) or err
            return f"tls.cafile {t.cafile}: not a usable CA bundle ({why})"
    what = t.certfile or t.cafile or "TLS"
    return f"{name('certfile') if t.certfile else 'tls'} {what}: cannot load: {reason}"


def _metrics_setup(settings: Settings) -> str | None:
    """Before any fork: check the metrics address is free and pick the directory the
    processes share their samples through."""
    from smtpguard.cli import CliError

    if settings.metrics_listen is None:
        return None
    host, port = settings.metrics_listen
    try:
        probe = socket.create_server((host, port))
        probe.close()
    except OSError as exc:
        raise CliError(
            f"--metrics-listen {host}:{port}: cannot listen: {exc.strerror or exc}"
        ) from None
    from smtpguard.gateway import metrics_prom

    return metrics_prom.setup()


def _metrics_serve(settings: Settings) -> None:
    from smtpguard.gateway import metrics_prom

    assert settings.metrics_listen is not None
    metrics_prom.serve(*settings.metrics_listen)


def _metrics_worker_exited(pid: int) -> None:
    from smtpguard.gateway import metrics_prom

    metrics_prom.worker_exited(pid)


def _check_reachable(host: str, port: int) -> None:
    from smtpguard.cli import CliError

    try:
        socket.create_connection((host, port), 5).close()
    except OSError as exc:
        reason = exc.strerror or "timed out"
        raise CliError(f"--upstream {host}:{port}: not reachable ({reason})") from None


def greeting_shown(policy: Policy) -> str:
    """The greeting clients get, as the startup block shows it."""
    if policy.emulation.pix or policy.banner is BannerPolicy.PIX:
        return "the server's 220, masked PIX-style (2, 0 and *)"
    if policy.banner is BannerPolicy.PASS:
        return "the server's own"
    if policy.banner is BannerPolicy.CUSTOM:
        return f"220 {policy.banner_text}"
    return f"220 {policy.hostname} ESMTP (--hostname or hostname = ... to change)"


# At start-up when the upstream cannot learn the client's address (docs/servers.md).
XCLIENT_OFF_WARNING = [
    "  WARNING       xclient = false: the server sees every client as this gateway's",
    "                address. It must not relay for that address (Postfix",
    "                permit_mynetworks with the gateway in mynetworks makes an open relay);",
    "                use --xclient (Postfix) or --upstream-proxy v2; see docs/servers.md",
]
# At start-up when a refused XCLIENT does not refuse the client (docs/security.md).
XCLIENT_FAIL_OPEN_WARNING = [
    "  WARNING       xclient_fail_open = true: when the server refuses XCLIENT or does",
    "                not offer it, it sees the client as this gateway's address. Postfix's",
    "                default mynetworks (its own addresses and loopback; its subnets with",
    "                mynetworks_style = subnet) trusts that address to relay, so any",
    "                client could relay. Keep the gateway out of mynetworks, or turn",
    "                xclient_fail_open off (the client then gets 421 4.7.0)",
]


def fail_open_warning() -> str:
    """XCLIENT_FAIL_OPEN_WARNING as one log line (a reload that turns it on)."""
    text = " ".join(line.strip() for line in XCLIENT_FAIL_OPEN_WARNING)
    return text.removeprefix("WARNING").strip()


def _print_banner(
    settings: Settings,
    host: str,
    port: int,
    target: str,
    builtin: bool,
    implicit: tuple[str, int] | None = None,
) -> None:
    policy = settings.policy
    shown = f"[{host}]" if ":" in host else host
    lines = [
        f"smtpguard {__version__} gateway, {policy.mode.value} mode, banner {policy.banner.value}",
        f"  listening on  {shown}:{port}",
        f"  relaying to   {target}",
        f"  greeting      {greeting_shown(policy)}",
    ]
    if settings.source:
        lines.append(f"  config        {settings.source} (SIGHUP reloads it)")
    if builtin:
        lines.append(f"  mail lands in {os.path.abspath(settings.maildir)} (Maildir)")
    if settings.protocol_log:
        lines.append(f"  protocol log  {settings.protocol_log} ({settings.protocol_log_format})")
    emu = policy.emulation
    if emu.pix:
        bug = (
            ", BUG split-eod (CSCds90792) ON: split end of data is swallowed"
            if emu.split_eod_bug
            else ""
        )
        lines.insert(
            0, f"*** PIX EMULATION for labs: rewrite {emu.rewrite.value}, lock-step{bug} ***"
        )
    if implicit is not None:
        lines.append(f"  implicit TLS  {implicit[0]}:{implicit[1]}")
    if policy.starttls.value != "strip":
        lines.append(f"  STARTTLS      {policy.starttls.value}")
    if settings.metrics_listen is not None:
        mh, mp = settings.metrics_listen
        lines.append(f"  metrics       http://{mh}:{mp}/metrics")
    from smtpguard.state.attach import describe

    shared = describe(settings)
    if shared is not None:
        lines.append(f"  shared state  {shared}")
    if policy.xclient:
        lines.append("  XCLIENT       on (the server sees the real client address)")
        if policy.xclient_fail_open:
            lines += XCLIENT_FAIL_OPEN_WARNING
    elif not builtin and settings.upstream_proxy == "off":
        lines += XCLIENT_OFF_WARNING
    lines.append(f"  try it        swaks --server {shown}:{port} --to you@example.test")
    lines.append("  stop with     Ctrl-C (drains sessions in flight)")
    print("\n".join(lines), flush=True)
