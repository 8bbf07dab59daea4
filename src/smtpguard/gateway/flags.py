"""``serve``'s flags, drawn from the config schema, and the overrides they make.

Every flag is declared on the key it overrides (:class:`~smtpguard.config.schema.Flag`
in ``config/schema.py``): its type and choices come from the key's type, its help
from the key's description and default. Flags default to None so only the ones the
user gave override the file; :func:`overrides` turns them into ``(key path, value,
flag)`` for :func:`~smtpguard.config.load.load`, which validates them with the file
and names the flag in an error.

Two flags read their value in their own way: ``--banner`` takes a policy name or the
custom text itself, and a section's flag (``--timeout NAME=SECONDS``) names the key.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from smtpguard.config import keys
from smtpguard.config.load import Override, Settings, load
from smtpguard.core.policy import BannerPolicy
from smtpguard.errors import CliError, ConfigError

DESCRIPTION = (
    "Listen for SMTP, relay to the upstream server, inspect every byte. Settings come "
    "from --config FILE (see docs/config.md); flags given on the command line override "
    "the file. SIGHUP re-reads the file."
)
LAB_GROUP = "lab emulation (never in production)"


def dest(key: keys.Key) -> str:
    """The namespace attribute of a key's flag ("--tls-cert": ``tls_cert``)."""
    assert key.flag is not None
    return key.flag.name.removeprefix("--").replace("-", "_")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the SMTP inspection gateway", description=DESCRIPTION
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (docs/config.md)")
    lab = p.add_argument_group(LAB_GROUP)
    for key in keys.flagged():
        group = lab if key.path[0] == "emulation" else p
        group.add_argument(key.flag.name, dest=dest(key), **_argument(key))  # type: ignore[union-attr]
    return p


def _argument(key: keys.Key) -> dict[str, Any]:
    flag = key.flag
    assert flag is not None
    tp = key.value_type
    kw: dict[str, Any] = {"help": _help(key)}
    if flag.metavar is not None:
        kw["metavar"] = flag.metavar
    if key.section is not None:
        names = ", ".join(key.section.model_fields)
        kw.update(
            action="append",
            default=[],
            help=f"override one of the {_escape(key.info.description)}; NAME is one of {names}",
        )
    elif tp is bool:
        if flag.word is None:
            kw.update(action="store_const", const=True)
        else:
            kw.update(choices=[flag.word])
    elif typing.get_origin(tp) is list:
        kw.update(action="append", help=kw["help"] + " (repeatable)")
    elif key.path == ("banner",):
        pass  # a policy name or the custom text: see _banner
    elif keys.choices(tp) is not None:
        kw.update(choices=list(keys.choices(tp) or ()))
    elif tp in (int, float):
        kw.update(type=tp)
    return kw


def _help(key: keys.Key) -> str:
    text = key.info.description or ""
    default = keys.default(key)
    if key.value_type is bool or default is None or default == [] or key.path == ("hostname",):
        return _escape(text)
    shown = default.value if hasattr(default, "value") else default
    if isinstance(shown, float) and shown.is_integer():
        shown = int(shown)
    elif isinstance(shown, str) and not keys.choices(key.value_type):
        shown = f'"{shown}"'  # a path as written (and no line of a man page starts with ".")
    return _escape(f"{text} (default: {shown})")


def _escape(text: str | None) -> str:
    return (text or "").replace("%", "%%")


def overrides(args: argparse.Namespace) -> list[Override]:
    """The flags the user gave, as (config key path, value, flag) overrides."""
    out: list[Override] = []
    for key in keys.flagged():
        flag = key.flag
        assert flag is not None
        value = getattr(args, dest(key), None)
        if value is None or value == []:
            continue
        if key.section is not None:
            out += _named(key, value)
        elif key.path == ("banner",):
            out += _banner(value)
        elif flag.word is not None:
            out.append((key.path, True, flag.name))
        else:
            out.append((key.path, value, flag.name))
    if getattr(args, "emulate_bug", None) is not None and getattr(args, "emulate", None) is None:
        raise CliError("--emulate-bug: only with --emulate pix")
    return out


def _banner(value: str) -> list[Override]:
    names = {b.value for b in BannerPolicy} - {BannerPolicy.CUSTOM.value}
    if value in names:
        banner, text = value, ""
    else:
        if not value.strip() or any(c in value for c in "\r\n\0"):
            raise CliError("--banner: custom text must be one non-empty line")
        banner, text = BannerPolicy.CUSTOM.value, value.strip()
    return [(("banner",), banner, "--banner"), (("banner_text",), text, "--banner")]


def _named(key: keys.Key, items: list[str]) -> list[Override]:
    """``--timeout NAME=SECONDS``: one key of the section per use."""
    assert key.flag is not None and key.section is not None
    names = tuple(key.section.model_fields)
    out: list[Override] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise CliError(
                f"{key.flag.name} {item!r}: expected {key.flag.metavar} with NAME one of "
                f"{', '.join(names)}"
            )
        try:
            number: object = float(value)
        except ValueError:
            number = value
        out.append(((*key.path, name), number, f"{key.flag.name} {name}"))
    return out


def flag_of(path: keys.Path) -> str | None:
    """The flag that overrides the key at ``path``, if it has one."""
    return next((k.flag.name for k in keys.flagged() if k.path == path and k.flag), None)


def load_settings(args: argparse.Namespace) -> Settings:
    """The config file (if any) with the command-line overrides; CliError if invalid."""
    try:
        return load(args.config, overrides(args))
    except ConfigError as exc:
        raise CliError(str(exc)) from None
