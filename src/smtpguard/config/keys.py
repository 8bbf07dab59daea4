"""Every key of the config file, as the schema declares it: the one walk over
:mod:`smtpguard.config.schema` that ``serve``'s flags, ``check-config``, the docs and
the reload's restart list read.

A :class:`Key` is one field of one model at its key path (``("gateway",
"max_sessions")``), with the :class:`~smtpguard.config.schema.Flag` that overrides it
and whether a reload applies it. :func:`default` is the value an unset key means:
the schema's own default for the gateway's sections, the built-in
:class:`~smtpguard.core.policy.Policy` for the policy keys (whose schema default is
``None``, "not set").
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from smtpguard.config import schema
from smtpguard.core import policy as core

Path = tuple[str, ...]


@dataclass(frozen=True)
class Key:
    path: Path
    info: FieldInfo

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def flag(self) -> schema.Flag | None:
        return next((m for m in self.info.metadata if isinstance(m, schema.Flag)), None)

    @property
    def restart(self) -> bool:
        return any(isinstance(m, schema.Restart) for m in self.info.metadata)

    @property
    def file_path(self) -> bool:
        return any(isinstance(m, schema.FilePath) for m in self.info.metadata)

    @property
    def unset(self) -> str:
        """What the key means when not set (check-config's text)."""
        found = (m.meaning for m in self.info.metadata if isinstance(m, schema.Unset))
        return next(found, "(not set)")

    @property
    def section(self) -> type[BaseModel] | None:
        """The model of a table (``[gateway]``), None for a value."""
        tp = self.info.annotation
        return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None

    @property
    def value_type(self) -> Any:
        """The key's type without ``None`` and ``Annotated`` (``int``, an enum, a
        ``Literal``, ``list[...]``)."""
        return bare(self.info.annotation)


def bare(tp: Any) -> Any:
    """``tp`` without ``Annotated`` wrappers and without ``| None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            real = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(real) != 1:
                return tp
            tp = real[0]
        else:
            return tp


def choices(tp: Any) -> tuple[str, ...] | None:
    """The spellings an enum or ``Literal`` key takes, None for any other type."""
    if typing.get_origin(tp) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tuple(str(m.value) for m in tp)
    return None


def walk(model: type[BaseModel] = schema.ConfigFile, prefix: Path = ()) -> Iterator[Key]:
    """Every key and table, in the order of the schema; a table before its keys."""
    for name, info in model.model_fields.items():
        key = Key((*prefix, name), info)
        yield key
        if key.section is not None and key.section is not schema.Checks:
            yield from walk(key.section, key.path)


def flagged() -> Iterator[Key]:
    """The keys and tables a ``serve`` flag overrides, in the order of the schema."""
    return (k for k in walk() if k.flag is not None)


def restart_keys() -> tuple[Key, ...]:
    """Keys and tables whose running value a reload keeps (``schema.RESTART``)."""
    return tuple(k for k in walk() if k.restart)


def is_hostport(key: Key) -> bool:
    """A ``HOST:PORT`` key, or a list of them (shown with an explicit host, brackets
    for IPv6)."""
    tp = key.info.annotation
    metadata = [*key.info.metadata]
    while typing.get_origin(tp) in (typing.Annotated, typing.Union, types.UnionType, list):
        args = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Annotated:
            metadata += args[1:]
        tp = next(a for a in args if a is not type(None))
    return any(getattr(getattr(m, "func", None), "__name__", "") == "_hostport" for m in metadata)


def get(model: BaseModel, path: Path) -> Any:
    """The value at ``path`` in a validated file."""
    value: Any = model
    for part in path:
        value = getattr(value, part)
    return value


_POLICY_SECTIONS: dict[str, Any] = {"timeouts": core.Timeouts(), "emulation": core.Emulation()}


def default(key: Key) -> Any:
    """What the key means when the file does not set it (None: "not set")."""
    if len(key.path) == 1 and key.section is None:
        return getattr(core.Policy(), key.name, None)
    if len(key.path) == 2 and key.path[0] in _POLICY_SECTIONS:
        return getattr(_POLICY_SECTIONS[key.path[0]], key.name)
    return key.info.get_default(call_default_factory=True)
