"""Start-up checks of ``serve``, shared with ``check-config``: everything a worker
needs is checked in the parent before anything is created, listens or forks, and
every problem is reported at once, one line each, naming the key as the user wrote
it (``FILE:LINE: key = value`` from the file, the flag from the command line).

:func:`problems` is the one list, side-effect free, so ``check-config`` says
"valid" exactly when ``serve`` would get past it: the protocol log, the Maildir
and the embedded store's directory can be written (nothing is created to find
out), the certificate and key load and match, every address is well-formed.
What only the running host can tell, ``serve`` checks afterwards, each as one line:
the upstream answering (:func:`check_reachable`), the addresses free to listen on.
Only then does :func:`create_files` make the protocol log, the Maildir and the
store, so a start that fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mailbox
import os
import re
import socket
import ssl
from collections.abc import Callable

from smtpguard.config.load import Settings, TlsFiles, split_hostport
from smtpguard.core.policy import StartTls
from smtpguard.errors import CliError
from smtpguard.gateway import metrics_prom
from smtpguard.gateway.flags import flag_of
from smtpguard.gateway.tls import TlsContexts, contexts
from smtpguard.logs import open_protocol_log
from smtpguard.state.attach import needed, prepare_for
from smtpguard.state.sqlite_store import database_path

Problem = tuple[tuple[str, ...], str]  # the key at fault, the message

# Names a key with its value in a message (Origins.name).
_Namer = Callable[[tuple[str, ...], object], str]

# RFC 1123 §2.1 host names: letters, digits and hyphens in dot-separated labels.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def problems(settings: Settings) -> list[str]:
    """Every reason ``serve`` would refuse these settings that is known without
    listening or connecting; empty: it starts (given free addresses and an upstream
    that answers)."""
    found = [*_address_problems(settings), *_file_problems(settings), *_tls_found(settings)]
    # In the order of the file; flags and defaults after, in the order checked.
    found.sort(key=lambda p: settings.origins.line(p[0]) or 1 << 30)
    return [text for _, text in found]


# -- addresses ------------------------------------------------------------------------


def _address_problems(settings: Settings) -> list[Problem]:
    g, named = settings.gateway, settings.origins.name
    out: list[Problem] = []
    listens = [
        (("gateway", "listen"), g.listen),
        (("tls", "implicit_listen"), settings.tls.implicit_listen),
        (("gateway", "metrics_listen"), g.metrics_listen),
    ]
    seen: dict[tuple[str, int], str] = {}
    for loc, text in listens:
        if not text:
            continue
        host, port = split_hostport(text)
        if not _is_host(host):
            out.append((loc, f"{named(loc, text)}: not an IP address or host name to listen on"))
        elif port and (host, port) in seen:
            out.append((loc, f"{named(loc, text)}: the same address as {seen[(host, port)]}"))
        seen.setdefault((host, port), settings.origins.flag(loc) or ".".join(loc))
    loc = ("gateway", "upstream")
    for text in g.upstream or ():  # each server of the list
        host, port = split_hostport(text)
        where = named(loc, text)
        if not _is_host(host):
            out.append((loc, f"{where}: not an IP address or host name"))
        elif port == 0:
            out.append((loc, f"{where}: port 0 cannot be connected to (expected 1-65535)"))
    return out


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _HOSTNAME.fullmatch(host) is not None
    return True


# -- files and directories --------------------------------------------------------------


def _file_problems(settings: Settings) -> list[Problem]:
    named = settings.origins.name
    out: list[Problem] = []
    plog = settings.protocol_log.path
    if plog:
        loc = ("protocol_log", "path")
        why = _file_unwritable(plog)
        if why:
            out.append((loc, f"{named(loc, plog)}: {why}"))
    pid_file = settings.gateway.pid_file
    if pid_file:  # written by renaming a new file into place: its directory must take one
        loc = ("gateway", "pid_file")
        why = _dir_unwritable(os.path.dirname(os.path.abspath(pid_file)))
        if why is None and os.path.isdir(pid_file):
            why = "is a directory"
        if why:
            out.append((loc, f"{named(loc, pid_file)}: {why}"))
    if settings.upstream is None:  # the built-in mailbox stores the mail
        loc = ("gateway", "maildir")
        maildir = settings.gateway.maildir
        why = _dir_unwritable(maildir, ("tmp", "new", "cur"))
        if why:
            out.append((loc, f"{named(loc, maildir)}: cannot store mail: {why}"))
    st = settings.state
    if st.is_local and needed(settings):
        loc = ("state", "directory")
        database = str(database_path(st.directory))
        why = _dir_unwritable(st.directory)
        if why is None and os.path.exists(database):
            why = _file_unwritable(database)
        if why:
            out.append((loc, f"{named(loc, st.directory)}: {why}"))
    return out


def _file_unwritable(path: str) -> str | None:
    """Why ``path`` cannot be opened for appending (made if missing, in a
    directory that must exist), without making it; None if it can."""
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "not writable (permission denied)"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        return f"cannot be created: directory {parent} does not exist"
    if not os.path.isdir(parent):
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: directory {parent} is not writable (permission denied)"
    return None


def _dir_unwritable(path: str, subdirs: tuple[str, ...] = ()) -> str | None:
    """Why files cannot be made in directory ``path`` (made, with its parents, if
    missing) nor in its existing ``subdirs``; None if they can."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path} is not a directory"
        for sub in ("", *subdirs):
            here = os.path.join(path, sub) if sub else path
            if sub and not os.path.exists(here):
                continue
            if not os.path.isdir(here):
                return f"{here} is not a directory"
            if not os.access(here, os.W_OK | os.X_OK):
                return f"{here} is not writable (permission denied)"
        return None
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        return f"{ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{path} does not exist and {ancestor} is not writable (permission denied)"
    return None


def create_files(settings: Settings) -> None:
    """Make the protocol log, the Maildir and the embedded store (once every check
    passed). A failure here is a race with another process: one line."""
    plog = settings.protocol_log
    if plog.path:
        try:
            open_protocol_log(plog.path, plog.format).flush()
        except OSError as exc:
            where = settings.origins.name(("protocol_log", "path"), plog.path)
            raise CliError(f"{where}: cannot open: {exc.strerror or exc}") from None
    if settings.upstream is None:
        maildir = settings.gateway.maildir
        try:
            mailbox.Maildir(maildir, create=True)
        except OSError as exc:
            where = settings.origins.name(("gateway", "maildir"), maildir)
            raise CliError(f"{where}: cannot store mail: {exc.strerror or exc}") from None
    prepare_for(settings)  # the shared store's database, when a feature needs it


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


# -- what only the running host can tell ------------------------------------------------


def check_reachable(settings: Settings, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), 5).close()
    except OSError as exc:
        reason = exc.strerror or "timed out"
        where = settings.origins.name(("gateway", "upstream"), f"{host}:{port}")
        raise CliError(f"{where}: not reachable ({reason})") from None


def check_any_reachable(settings: Settings, servers: tuple[tuple[str, int], ...]) -> list[str]:
    """One upstream server must answer at start-up; with several, the others may be
    down (sessions go to those that answer): a warning line for each of them."""
    if len(servers) == 1:
        check_reachable(settings, *servers[0])
        return []
    down: list[str] = []
    for host, port in servers:
        try:
            check_reachable(settings, host, port)
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
        where = settings.origins.name(("gateway", "metrics_listen"), f"{host}:{port}")
        raise CliError(f"{where}: cannot listen: {exc.strerror or exc}") from None
    return metrics_prom.setup()


# -- TLS ----------------------------------------------------------------------------------


def _uses_tls(settings: Settings) -> bool:
    t = settings.tls
    return settings.policy.starttls is not StartTls.STRIP or bool(t.certfile or t.implicit_listen)


def tls_contexts(settings: Settings, upstream_host: str) -> TlsContexts | None:
    """TLS contexts when STARTTLS is relayed or terminated, loaded once before any
    worker starts (:func:`problems` has checked they load)."""
    if not _uses_tls(settings):
        return None
    t = settings.tls
    try:
        return contexts(t.certfile, t.keyfile, t.verify_upstream, t.cafile, upstream_host)
    except (OSError, ssl.SSLError) as exc:
        raise CliError("\n".join(tls_problem_lines(settings, exc))) from None


def _tls_found(settings: Settings) -> list[Problem]:
    """The certificate, key and CA bundle load and match; else what is wrong."""
    if not _uses_tls(settings):
        return []
    t = settings.tls
    try:
        contexts(t.certfile, t.keyfile, t.verify_upstream, t.cafile)
    except (OSError, ssl.SSLError) as exc:
        return tls_problem(t, exc, settings.origins.name)
    return []


def tls_problem_lines(settings: Settings, exc: BaseException) -> list[str]:
    """:func:`tls_problem` for each file at fault, named as the user wrote it."""
    return [text for _, text in tls_problem(settings.tls, exc, settings.origins.name)]


def tls_problem(t: TlsFiles, exc: BaseException, name: _Namer) -> list[Problem]:
    """Which TLS files are at fault and what is wrong with each, one problem per
    file, for an error ``exc`` that loading them raised. ``name(loc, value)`` names
    a key with its value."""

    def at(key: str, why: str) -> Problem:
        return ("tls", key), f"{name(('tls', key), getattr(t, key))}: {why}"

    texts: dict[str, bytes] = {}
    unreadable: list[Problem] = []
    for key in ("certfile", "keyfile", "cafile"):
        path = getattr(t, key)
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                texts[key] = f.read()
        except OSError as err:
            unreadable.append(at(key, f"cannot read: {err.strerror or err}"))
    if unreadable:
        return unreadable
    cert = texts.get("certfile", b"")
    if t.certfile and b"-----BEGIN CERTIFICATE-----" not in cert:
        why = "no PEM certificate in it (expected a -----BEGIN CERTIFICATE----- block)"
        return [at("certfile", why)]
    key_text = texts.get("keyfile", cert)
    key_at = "keyfile" if t.keyfile else "certfile"
    if t.certfile and b"PRIVATE KEY-----" not in key_text:
        if t.keyfile:
            return [at(key_at, "no PEM private key in it (expected a PRIVATE KEY block)")]
        return [
            at(
                key_at,
                "no private key in it; put the key in the same file or name it with "
                f"{flag_of(('tls', 'keyfile'))} FILE (tls.keyfile)",
            )
        ]
    if b"ENCRYPTED" in key_text:
        why = "the private key is encrypted (the gateway needs it without a passphrase)"
        return [at(key_at, why)]
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    if "KEY_VALUES_MISMATCH" in str(reason) or "values mismatch" in str(exc):
        return [at(key_at, f"the private key does not match the certificate in {t.certfile}")]
    if t.cafile and isinstance(exc, ssl.SSLError) and "certfile" not in str(exc).lower():
        try:
            ssl.create_default_context(cafile=t.cafile)
        except (OSError, ssl.SSLError) as err:
            return [at("cafile", f"not a usable CA bundle ({getattr(err, 'reason', None) or err})")]
    if t.certfile:
        return [at("certfile", f"cannot load: {reason}")]
    return [(("tls",), f"tls: cannot load: {reason}")]
