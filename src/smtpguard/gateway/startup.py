"""Start-up checks of ``serve``: everything a worker needs is checked in the parent,
before anything listens or forks, so a problem is one line on stderr and nothing
half-starts (the protocol log and Maildir writable, the upstream reachable, the
certificate and key loadable and matching, the metrics address free).

Each check raises :class:`~smtpguard.errors.CliError` naming what is at fault.
"""

from __future__ import annotations

import argparse
import contextlib
import mailbox
import os
import socket
import ssl

from smtpguard.config.load import Settings, TlsFiles
from smtpguard.core.policy import StartTls
from smtpguard.errors import CliError
from smtpguard.gateway import metrics_prom
from smtpguard.gateway.flags import flag_of, given
from smtpguard.gateway.tls import TlsContexts, contexts
from smtpguard.logs import open_protocol_log


def check_files(settings: Settings) -> None:
    """The protocol log and the built-in mailbox must be writable."""
    plog = settings.protocol_log
    if plog.path:
        try:
            open_protocol_log(plog.path, plog.format).flush()
        except OSError as exc:
            raise CliError(
                f"--protocol-log {plog.path}: cannot open: {exc.strerror or exc}"
            ) from None
    if settings.upstream is None:
        maildir = settings.gateway.maildir
        try:
            mailbox.Maildir(maildir, create=True)
            probe = os.path.join(maildir, "tmp", f".smtpguard-check-{os.getpid()}")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise CliError(
                f"--maildir {maildir}: cannot store mail there: {exc.strerror or exc}"
            ) from None


def write_pid_file(path: str) -> None:
    """Write this process's pid to ``path`` (its directory created if missing), by
    renaming a complete file into place: a reader never sees a partial pid."""
    try:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"gateway.pid_file {path}: cannot write: {exc.strerror or exc}") from None


def remove_pid_file(path: str) -> None:
    """Remove ``path`` if it still names this process (a later instance may own it)."""
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            if int(f.read().strip()) != os.getpid():
                return
        os.unlink(path)


def check_reachable(host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), 5).close()
    except OSError as exc:
        reason = exc.strerror or "timed out"
        raise CliError(f"--upstream {host}:{port}: not reachable ({reason})") from None


def check_any_reachable(servers: tuple[tuple[str, int], ...]) -> list[str]:
    """One upstream server must answer at start-up; with several, the others may be
    down (sessions go to those that answer): a warning line for each of them."""
    if len(servers) == 1:
        check_reachable(*servers[0])
        return []
    down: list[str] = []
    for host, port in servers:
        try:
            check_reachable(host, port)
        except CliError as exc:
            down.append(str(exc))
    if len(down) == len(servers):
        raise CliError("no upstream server reachable: " + "; ".join(down))
    return down


def metrics_setup(settings: Settings) -> str | None:
    """Check the metrics address is free and pick the directory the processes share
    their samples through (None: no metrics)."""
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
    return metrics_prom.setup()


def tls_contexts(
    settings: Settings, upstream_host: str, args: argparse.Namespace | None = None
) -> TlsContexts | None:
    """TLS contexts when STARTTLS is relayed or terminated, loaded once before any
    worker starts so a bad certificate fails at start with one line."""
    t = settings.tls
    if settings.policy.starttls is StartTls.STRIP and not t.certfile and not t.implicit_listen:
        return None
    try:
        return contexts(t.certfile, t.keyfile, t.verify_upstream, t.cafile, upstream_host)
    except (OSError, ssl.SSLError) as exc:
        from_flags = {k: given(args, ("tls", k)) is not None for k in ("certfile", "keyfile")}
        problem = tls_problem(t, exc, from_flags)
        raise CliError(f"{settings.source}: {problem}" if settings.source else problem) from None


def tls_problem(t: TlsFiles, exc: BaseException, given: dict[str, bool] | None = None) -> str:
    """Which TLS file is at fault and what is wrong with it, in one line, for an
    error ``exc`` that loading them raised. ``given`` says which keys came from a
    flag (named as the user typed it) rather than the file (``tls.KEY``)."""
    given = given or {}

    def name(key: str) -> str:
        flag = flag_of(("tls", key))
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
            f"with {flag_of(('tls', 'keyfile'))} FILE (tls.keyfile)"
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
