"""Read a config file, apply command-line overrides, validate, build the settings.

Theory of operation: the file is parsed by ``tomllib`` into plain data; flags the
user gave on the command line are written into that data at their key paths (and
remembered, so an error in a flag's value names the flag, not the file); pydantic
validates the whole; :func:`settings_from` turns the models into the immutable
objects the gateway runs on (:class:`~smtpguard.core.policy.Policy`,
:class:`~smtpguard.config.access.AccessPolicy`, :class:`Settings`).

Every failure is a :class:`ConfigError` whose text is one line per problem:
``FILE:LINE: key.path: got VALUE, expected WHAT``. When several keys are wrong, all
of them are reported, in the order of the file.

File paths written in a config file (:data:`PATH_KEYS`: ``protocol_log.path``,
``gateway.maildir``, the ``[tls]`` files, ``state.directory``) are relative to the directory of
that file, so a configuration means the same whatever the current directory; paths
given as flags, and the built-in default Maildir, are relative to the current
directory as usual.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic.functional_validators import AfterValidator

from smtpguard import netaddr
from smtpguard.config import keys, schema
from smtpguard.config.access import AccessPolicy
from smtpguard.config.locate import find_line
from smtpguard.config.safety import unsafe_combinations
from smtpguard.core import policy as core
from smtpguard.errors import ConfigError
from smtpguard.state import DedupeSettings, StateSettings, default_directory

Loc = tuple[str | int, ...]
Override = tuple[tuple[str, ...], object, str]  # key path, value, flag that set it


TlsFiles = schema.TlsSection


@dataclass(frozen=True)
class Origins:
    """Where each key's value came from, to name it in a message as the user wrote
    it: the flag they typed, else the file's line, else "the default"."""

    path: str | None = None  # the config file, if any
    source: str = ""  # its text
    flags: Mapping[Loc, str] = field(default_factory=dict)  # key path -> the flag that set it

    def flag(self, loc: Loc) -> str | None:
        """The flag that set ``loc`` or the table it is in, if one did."""
        for k in range(len(loc), 0, -1):
            found = self.flags.get(loc[:k])
            if found is not None:
                return found
        return None

    def line(self, loc: Loc) -> int | None:
        """The file's line that set ``loc`` (None: a flag or the default)."""
        if self.path is None or self.flag(loc) is not None:
            return None
        return find_line(self.source, loc)

    def where(self, loc: Loc) -> str:
        """``FILE:LINE`` of the key, ``FILE`` when the file does not set it."""
        if self.path is None:
            return "configuration"
        line = find_line(self.source, loc)
        return f"{self.path}:{line}" if line is not None else self.path

    def name(self, loc: Loc, value: object) -> str:
        """The key with its value, as a message starts: ``--tls-cert FILE``,
        ``FILE:LINE: tls.certfile = "FILE"`` or ``tls.certfile = "FILE" (the default)``."""
        flag = self.flag(loc)
        if flag is not None:
            return f"{flag} {value}"
        shown = f"{_dotted(loc)} = {_show(value, 200)}"
        line = self.line(loc)
        if line is not None:
            return f"{self.path}:{line}: {shown}"
        prefix = f"{self.path}: " if self.path is not None else ""
        return f"{prefix}{shown} (not set: the default)"


@dataclass(frozen=True)
class Settings:
    """Everything ``serve`` needs, validated.

    ``file`` is the validated file with the flags applied and its relative paths
    resolved: every key, set or defaulted, read as ``settings.gateway.max_sessions``.
    The other fields are what the gateway runs on where that differs from the
    text of a key (built objects, parsed addresses, ``workers = 0`` resolved)."""

    policy: core.Policy
    access: AccessPolicy
    file: schema.ConfigFile
    listen: tuple[str, int]
    upstream: tuple[str, int] | None  # the first of ``upstreams``
    workers: int
    metrics_listen: tuple[str, int] | None
    state: StateSettings
    dedupe: DedupeSettings
    source: str | None = None  # the config file, if any
    upstreams: tuple[tuple[str, int], ...] = ()  # none: the built-in mailbox
    origins: Origins = Origins()  # where each key came from, for messages

    @property
    def gateway(self) -> schema.GatewaySection:
        return self.file.gateway

    @property
    def protocol_log(self) -> schema.ProtocolLogSection:
        return self.file.protocol_log

    @property
    def tls(self) -> schema.TlsSection:
        return self.file.tls


def effective_log_level(settings: Settings, tty: bool) -> str:
    """The application log level: as configured, else info on a terminal (one line
    per session shows mail flowing) and warning for a daemon."""
    if settings.gateway.log_level is not None:
        return settings.gateway.log_level
    return "info" if tty else "warning"


# Keys holding file paths: relative ones written in a config file resolve against
# the file's directory.
# (marked FILE_PATH in the schema).
PATH_KEYS: tuple[tuple[str, ...], ...] = tuple(k.path for k in keys.walk() if k.file_path)


def load(path: str | None, overrides: Iterable[Override] = ()) -> Settings:
    """Load ``path`` (None: no file, defaults only), apply ``overrides``, validate."""
    source = read_source(path) if path is not None else ""
    data = parse_toml(source, path) if path is not None else {}
    origins: dict[Loc, str] = {}
    for keypath, value, flag in overrides:
        if _set(data, keypath, value):
            origins[keypath] = flag
    where = _Where(Origins(path, source, origins), data)
    try:
        cfg = schema.ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(*where.all(exc.errors())) from None
    if path is not None:
        _resolve_paths(data, origins, os.path.dirname(os.path.abspath(path)))
        cfg = schema.ConfigFile.model_validate(data)
    problems: list[_Invalid] = []
    settings = settings_from(cfg, path, problems)
    if problems:
        raise ConfigError(*where.sorted_messages(problems))
    return dataclasses.replace(settings, origins=where.origins)


def _resolve_paths(data: dict[str, Any], origins: dict[Loc, str], base: str) -> None:
    """Make the relative paths the file set absolute, against ``base``."""
    for keypath in PATH_KEYS:
        if keypath in origins:  # a flag: relative to the current directory
            continue
        value = _get(data, keypath)
        if isinstance(value, str) and value and not os.path.isabs(value):
            _set(data, keypath, os.path.normpath(os.path.join(base, value)))


def read_source(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (TOML files are UTF-8)") from None


def parse_toml(source: str, path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
        if m:
            text = text[: m.start()]
            raise ConfigError(f"{path}:{m[1]}:{m[2]}: invalid TOML: {text}") from None
        text = re.sub(r"\s*\(at end of document\)$", "", text)
        line = source.count("\n") + 1
        raise ConfigError(f"{path}:{line}: invalid TOML: {text} (at end of file)") from None


# -- building the settings ---------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, loc: Loc, value: object, expected: str) -> None:
        self.loc, self.value, self.expected = loc, value, expected


# What a setting that needs a certificate expects, naming the config key and the flag.
NEEDS_CERT = 'a certificate too: tls.certfile = "FILE" in the config file or --tls-cert FILE'


def settings_from(
    cfg: schema.ConfigFile, source: str | None = None, problems: list[_Invalid] | None = None
) -> Settings:
    """The settings of a validated file; a setting that contradicts another is added
    to ``problems`` (raised at once when no list is given) and a default used."""
    found: list[_Invalid] = [] if problems is None else problems
    g = cfg.gateway
    lhost, lport = split_hostport(g.listen)
    if cfg.starttls is core.StartTls.TERMINATE and not cfg.tls.certfile:
        found.append(_Invalid(("starttls",), "terminate", NEEDS_CERT))
    if cfg.tls.implicit_listen and not cfg.tls.certfile:
        found.append(_Invalid(("tls", "implicit_listen"), cfg.tls.implicit_listen, NEEDS_CERT))
    found.extend(_Invalid(loc, value, why) for loc, value, why in unsafe_combinations(cfg))
    a = cfg.access
    policy = policy_from(cfg, found)
    if problems is None and found:
        raise found[0]
    return Settings(
        policy=policy,
        file=cfg,
        access=AccessPolicy(
            allow=tuple(a.allow),  # type: ignore[arg-type]  # validated to networks
            deny=tuple(a.deny),  # type: ignore[arg-type]
            max_sessions_per_ip=a.max_sessions_per_ip,
            connection_rate=a.connection_rate,
            rate_period=a.rate_period,
            normalize_networks=tuple(a.normalize_networks),  # type: ignore[arg-type]
            proxy_from=tuple(a.proxy_protocol_from),  # type: ignore[arg-type]
        ),
        listen=(lhost, lport),
        upstream=split_hostport(g.upstream[0]) if g.upstream else None,
        upstreams=tuple(split_hostport(u) for u in g.upstream or ()),
        workers=g.workers or os.cpu_count() or 1,
        metrics_listen=split_hostport(g.metrics_listen) if g.metrics_listen else None,
        state=state_settings(cfg.state),
        dedupe=DedupeSettings(cfg.dedupe.enabled, cfg.dedupe.window),
        source=source,
    )


def split_hostport(text: str) -> tuple[str, int]:
    """A validated ``HOST:PORT`` setting (an empty host is loopback)."""
    return netaddr.split_hostport(text, default_host="127.0.0.1")


# Names /etc/hosts gives the loopback addresses (Debian, Red Hat, systemd-resolved).
_LOOPBACK_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "localhost4",
        "localhost4.localdomain4",
        "localhost6",
        "localhost6.localdomain6",
        "ip6-localhost",
        "ip6-loopback",
    }
)


def is_loopback_name(name: str) -> bool:
    name = name.lower().rstrip(".")
    return name in _LOOPBACK_NAMES or name.startswith("localhost.")


def default_hostname() -> str:
    """The name in the generic banner: the host name the system reports, made fully
    qualified only when the resolver's FQDN for it is a real name. (``getfqdn()``
    alone returns the first alias of the address, which is "localhost" when
    /etc/hosts lists the host name on a 127.0.0.1 line after it.)"""
    name = socket.gethostname().strip()
    if not name or is_loopback_name(name):
        return "localhost"
    if "." in name:
        return name
    try:
        fqdn = socket.getfqdn(name)
    except (OSError, UnicodeError):  # pragma: no cover - getfqdn swallows resolver errors
        return name
    if fqdn and "." in fqdn and not is_loopback_name(fqdn):
        return fqdn
    return name


def policy_from(cfg: schema.ConfigFile, problems: list[_Invalid] | None = None) -> core.Policy:
    base = core.Policy.for_mode(cfg.mode or core.Mode.MAILGUARD)
    top: dict[str, Any] = {}
    for name in (
        "banner",
        "banner_text",
        "smuggling",
        "starttls",
        "xclient",
        "xclient_fail_open",
        "max_pending",
    ):
        if getattr(cfg, name) is not None:
            top[name] = getattr(cfg, name)
    if cfg.bdat_drain_limit is not None:
        top["bdat_drain_limit"] = cfg.bdat_drain_limit
    if cfg.bad_line_limit is not None:
        top["bad_line_limit"] = cfg.bad_line_limit
    if cfg.allowed_verbs is not None:
        top["allowed_verbs"] = frozenset(cfg.allowed_verbs)
    if cfg.ehlo_keywords is not None:
        top["ehlo_keywords"] = frozenset(cfg.ehlo_keywords)
    top["hostname"] = cfg.hostname or default_hostname()
    top["dedupe"] = cfg.dedupe.enabled
    top["dedupe_answer"] = cfg.dedupe.answer
    top["upstream_tries"] = len(set(cfg.gateway.upstream or ())) or 1
    banner = top.get("banner", base.banner)
    text = top.get("banner_text", "")
    found: list[_Invalid] = [] if problems is None else problems
    if banner is core.BannerPolicy.CUSTOM and not text:
        found.append(_Invalid(("banner",), "custom", 'banner_text = "..." set too'))
        top["banner"] = core.BannerPolicy.GENERIC
    if text and banner is not core.BannerPolicy.CUSTOM:
        found.append(_Invalid(("banner_text",), text, 'banner = "custom" (or no banner_text)'))
        top["banner_text"] = ""
    checks = _checks(cfg.checks, found)
    if problems is None and found:
        raise found[0]
    return dataclasses.replace(
        base,
        **top,
        checks=checks,
        timeouts=dataclasses.replace(core.Timeouts(), **_set_fields(cfg.timeouts)),
        emulation=dataclasses.replace(core.Emulation(), **_set_fields(cfg.emulation)),
        screen=_screens(cfg.screen),
    )


def _screens(s: schema.ScreenSection) -> core.Screens:
    return core.Screens(
        non_smtp=s.non_smtp,
        non_smtp_action=core.ScreenAction(s.non_smtp_action),
        pipelining=s.pipelining,
        pipelining_action=s.pipelining_action,
        error_limit=s.error_limit,
        error_delay=s.error_delay,
        error_delay_cap=s.error_delay_cap,
        greet_wait=s.greet_wait,
        pregreet_action=core.ScreenAction(s.pregreet_action),
        pass_ttl=s.pass_ttl,
    )


def _set_fields(model: BaseModel) -> dict[str, Any]:
    return {k: v for k, v in model if v is not None}


def _checks(model: schema.Checks, problems: list[_Invalid]) -> core.Checks:
    defaults = core.Checks()
    out: dict[str, Any] = {}
    for name, spec in model:
        default = getattr(defaults, name)
        loc: Loc = ("checks", name)
        if isinstance(spec, schema.LimitCheck | schema.PatternCheck):
            kw = _set_fields(spec)
            if "limit" in kw and kw["limit"] == 0:
                kw["limit"] = None
            if "patterns" in kw:
                kw["patterns"] = tuple(kw["patterns"])
            check = dataclasses.replace(default, **kw)
            if check.action is core.Verdict.RATE_LIMIT and check.rate < 1:
                problems.append(
                    _Invalid((*loc, "action"), "rate-limit", "rate = N (events per period) too")
                )
                continue
            if check.action is not core.Verdict.RATE_LIMIT:
                wrong = [key for key in ("rate", "period") if key in kw]
                for key in wrong:
                    problems.append(
                        _Invalid((*loc, key), kw[key], 'it only with action = "rate-limit"')
                    )
                if wrong:
                    continue
            out[name] = check
        elif spec is not None:  # special_characters: a bare verdict
            if spec is core.Verdict.RATE_LIMIT:
                others = _one_of(v for v in core.Verdict if v is not spec)
                problems.append(_Invalid(loc, spec.value, others))
                continue
            out[name] = spec
    return dataclasses.replace(defaults, **out)


# -- error messages --------------------------------------------------------------------


class _Where:
    def __init__(self, origins: Origins, data: dict[str, Any]) -> None:
        self.origins, self.data = origins, data

    def _line(self, loc: Loc) -> int:
        found = find_line(self.origins.source, loc) if self.origins.path else None
        return found if found is not None else 1 << 30

    def all(self, errors: Sequence[Any]) -> list[str]:
        """One message per validation error, in the order of the file."""
        out = []
        for err in sorted(errors, key=lambda e: self._line(tuple(e["loc"]))):
            loc: Loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                out.append(self.message(loc, None, _unknown_key(loc)))
            else:
                out.append(self.message(loc, _expected(err, loc), _get(self.data, loc)))
        return out

    def sorted_messages(self, problems: Sequence[_Invalid]) -> list[str]:
        ordered = sorted(problems, key=lambda p: self._line(p.loc))
        return [self.message(p.loc, p.expected, p.value) for p in ordered]

    def message(self, loc: Loc, expected: str | None, value: object) -> str:
        key = _dotted(loc)
        flag = self.origins.flag(loc)
        if flag is not None:
            return f"{flag}: got {_show(value)}, expected {expected}"
        where = self.origins.where(loc)
        if expected is None:  # value carries the whole message
            return f"{where}: {key}: {value}"
        return f"{where}: {key}: got {_show(value)}, expected {expected}"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_key(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    known = list(model.model_fields) if model is not None else []
    name = str(loc[-1])
    if len(loc) > 1 and name in schema.ConfigFile.model_fields and name not in known:
        # TOML puts every key after a [table] header into that table.
        return (
            f'unknown key: "{name}" is a top-level key; move it above the first '
            f"[table] header (top-level keys must come before any table)"
        )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    # The right key in the wrong table (a top-level "workers" for "gateway.workers").
    elsewhere = [".".join(p) for p in _all_keys(schema.ConfigFile) if p[-1] == name]
    if elsewhere:
        return f'unknown key (did you mean "{elsewhere[0]}"?)'
    if known and len(known) <= 16:
        return f"unknown key (expected one of: {', '.join(known)})"
    return "unknown key"


def _all_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        out.append((*prefix, name))
        sub = _model_type(info.annotation)
        if sub is not None:
            out += _all_keys(sub, (*prefix, name))
    return out


def _model_at(loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] = schema.ConfigFile
    for part in loc:
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        inner = _model_type(info.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _model_type(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return None


def field_at(loc: Loc) -> FieldInfo | None:
    """The schema field at ``loc`` (list indices skipped)."""
    names = [p for p in loc if isinstance(p, str)]
    model = _model_at(tuple(names[:-1]))
    return model.model_fields.get(names[-1]) if model is not None and names else None


def _expected(err: Any, loc: Loc) -> str:
    if err["type"] == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    info = field_at(loc)
    if info is None:
        return str(err["msg"]).removeprefix("Input should be ")
    tp: Any = info.annotation
    if isinstance(loc[-1], int) or (len(loc) > 1 and isinstance(loc[-2], int)):
        tp = _list_item(tp)
    return describe(tp, info.metadata)


def _list_item(tp: Any) -> Any:
    for arg in (*typing.get_args(tp), tp):
        if typing.get_origin(arg) is list:
            return typing.get_args(arg)[0]
    return tp


_VALIDATOR_TEXT = {
    "_verb": ("an SMTP command verb", "SMTP command verbs"),
    "_keyword": ("an EHLO keyword", "EHLO keywords"),
    "_one_line": ("one line of text", "lines of text"),
    "_hostname": ("a host name", "host names"),
    "_hostport": ('"HOST:PORT"', '"HOST:PORT" strings'),
    "_regex": ("a regular expression", "regular expressions"),
    "_network": ('a network like "192.0.2.0/24"', 'networks like "192.0.2.0/24"'),
}


def describe(tp: Any, metadata: Sequence[Any] = (), plural: bool = False) -> str:
    """What a value of type ``tp`` looks like, in words ("an integer >= 1")."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        return " or ".join(describe(a, metadata, plural) for a in real)
    if origin is typing.Annotated:
        return describe(args[0], [*metadata, *args[1:]], plural)
    if origin is list:
        return "a list of " + describe(args[0], (), plural=True)
    if origin is typing.Literal:
        return _one_of(args)
    for meta in metadata:
        if isinstance(meta, AfterValidator):
            name = getattr(meta.func, "__name__", "")
            if name in _VALIDATOR_TEXT:
                return _VALIDATOR_TEXT[name][plural]
    bounds = _bounds(metadata)
    if tp is bool:
        return "true or false"
    if tp is int:
        return ("integers" if plural else "an integer") + bounds
    if tp is float:
        return ("numbers" if plural else "a number") + bounds
    if tp is str:
        return "strings" if plural else "a string"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _one_of(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "tables" if plural else "a table"
    return str(tp)


def _bounds(metadata: Sequence[Any]) -> str:
    out = []
    for meta in metadata:
        items = meta.metadata if isinstance(meta, FieldInfo) else [meta]
        for m in items:
            if isinstance(m, annotated_types.Ge):
                out.append(f" >= {m.ge}")
            elif isinstance(m, annotated_types.Gt):
                out.append(f" > {m.gt}")
            elif isinstance(m, annotated_types.Le):
                out.append(f" <= {m.le}")
    return " and".join(out)


def _one_of(values: Iterable[Any]) -> str:
    words = [json.dumps(v.value if isinstance(v, enum.Enum) else v) for v in values]
    return words[0] if len(words) == 1 else f"one of {', '.join(words)}"


def _get(data: Any, loc: Loc) -> object:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _set(data: dict[str, Any], keypath: tuple[str, ...], value: object) -> bool:
    node = data
    for part in keypath[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            return False  # the file's own error at this key will be reported
        node = nxt
    node[keypath[-1]] = value
    return True


def _show(value: object, limit: int = 60) -> str:
    """A value as TOML would write it, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, str | list):
        text = json.dumps(value, ensure_ascii=False, default=str)
    elif value is None:
        text = "nothing"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def state_settings(s: schema.StateSection) -> StateSettings:
    """``[state]`` (a relative directory was resolved with the other paths; not set:
    the per-user state directory, :func:`~smtpguard.state.default_directory`)."""
    directory = s.directory or default_directory(os.environ, os.geteuid())
    return StateSettings(s.url, directory, s.timeout, s.retry, s.lease, s.prefix)
