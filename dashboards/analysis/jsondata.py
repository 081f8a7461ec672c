"""Schema objects to and from JSON: dataclass trees (dashboards/analysis/schema.py) and plain JSON data.

- :func:`cleaned`: the same tree with numpy scalars as Python values and NaN/infinities as None;
- :func:`to_json`: plain JSON data of a cleaned tree, keys in field order;
- :func:`load`: parsed JSON back into a type (dataclasses, ``X | None``, lists, dicts), strictly: a key the
  type does not have, or a value of the wrong kind, is a ValueError naming the key;
- :func:`shallow`: a dataclass's fields as keyword arguments without recursing (``dataclasses.asdict`` does).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

import numpy as np


def shallow(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as keyword arguments, nested values as they are (``dataclasses.asdict`` recurses)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def cleaned(value: Any) -> Any:
    """The same tree with numpy scalars as Python values and NaN/infinities as None (dataclasses stay typed).

    >>> cleaned({"a": np.float64("nan"), "b": [np.int64(2), float("inf")], "c": (1.5,)})
    {'a': None, 'b': [2, None], 'c': [1.5]}
    >>> @dataclasses.dataclass
    ... class Pair:
    ...     low: float | None
    ...     high: float | None
    >>> cleaned(Pair(low=math.inf, high=np.float64(0.5)))
    Pair(low=None, high=0.5)
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: cleaned(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, dict):
        return {str(k): cleaned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [cleaned(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def to_json(value: Any) -> Any:
    """Plain JSON data of a (cleaned) schema object, keys in field order."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return cleaned(value)


def load(tp: Any, data: Any, where: str = "summary") -> Any:
    """``data`` (parsed JSON) as schema type ``tp``; ValueError naming the key that does not fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (Union, types.UnionType):
        if data is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arm in (a for a in typing.get_args(tp) if a is not type(None)):
            try:
                return load(arm, data, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {data!r} fits none of {tp}")
    if origin is list:
        _expect(isinstance(data, list), where, "a list", data)
        return [load(typing.get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        _expect(isinstance(data, dict), where, "an object", data)
        return {str(k): load(typing.get_args(tp)[1], v, f"{where}.{k}") for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        _expect(isinstance(data, dict), where, "an object", data)
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        no_unknown_keys(data, names, where)
        return tp(**{k: load(hints[k], v, f"{where}.{k}") for k, v in data.items()})
    if tp is float:
        _expect(isinstance(data, (int, float)) and not isinstance(data, bool), where, "a number", data)
        return data
    _expect(isinstance(data, tp) and not (tp is int and isinstance(data, bool)), where, tp.__name__, data)
    return data


def _expect(ok: bool, where: str, what: str, data: Any) -> None:
    if not ok:
        raise ValueError(f"{where}: expected {what}, got {data!r}"[:300])


def no_unknown_keys(data: dict, names: set[str], where: str) -> None:
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: key {unknown[0]!r} is not in the summary schema (dashboards/analysis/schema.py)")
