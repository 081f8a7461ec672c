"""Strict conversion of parsed YAML (dicts, lists, scalars) into frozen dataclasses.

Why not a library: the config needs exactly three things -- unknown keys are errors, types are
checked without silent coercion (``"1e-5"`` is not a float, ``true`` is not an int), and every error
names the dotted key -- and ~100 lines of stdlib do that with messages we control.

Supported field types: ``Any`` (passed through), ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``X | None``,
``Literal[...]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from orchestrator.core.errors import ConfigError

T = TypeVar("T")
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if origin is dict:
        return f"a mapping of {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    if tp is Any:  # e.g. study axis values: checked where they are applied (orchestrator.core.axes)
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        arms = [arg for arg in get_args(tp) if arg is not type(None)]
        if len(arms) == 1:  # `X | None`: X's own message says what is wrong inside it
            return _convert(value, arms[0], key)
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
        kt, vt = get_args(tp)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    # Scalars: no silent coercion, except an integer where a float is expected.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            # PyYAML implements YAML 1.1, where `1e-5` (no dot) is a string; everyone means the number.
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a field type this module does not support is a programming error
        raise TypeError(f"unsupported config field type {tp!r} at {key}")
    if not ok:
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    where = key or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(str(name), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{_join(key, name)}: unknown key{hint}; allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(key, name)}: required key is missing ({help_of(cls, name)})")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # __post_init__ messages name keys relative to their section; prefix the section path.
        msg = str(err)
        raise ConfigError(f"{key}.{msg}" if key and not msg.startswith(key + ".") else msg) from None


def to_dict(obj: Any) -> Any:
    """Plain YAML-safe data (lists instead of tuples) for a dataclass tree."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def documented(text: str, **kwargs) -> Any:
    """A dataclass field with help text (``metadata={"help": text}``); ``kwargs`` as for ``dataclasses.field``."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


def help_of(cls: type, name: str) -> str:
    """The help text of one field (``metadata={"help": ...}``)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``--set a.b.c=VALUE`` to parsed YAML ``data`` in place; VALUE is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. grpo.max_steps=10")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment}: KEY must be dotted names like grpo.max_steps")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {dotted}: value {raw!r} is not valid YAML ({err.problem})") from None
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)
