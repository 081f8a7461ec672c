"""Study axes: ``grid.axes`` maps dotted config keys to value lists, and the grid gains one cell per combination.

    grid: {strategies: [uniform, proportional], seeds: [0, 1],
           axes: {lora.rank: [8, 32], grpo.learning_rate: [1.0e-5, 1.0e-4]}}

is 2 strategies x 2 seeds x 4 cells = 16 runs. :func:`expand_cells` builds each cell's config (the study
config with that cell's values set) and checks it exactly as a loaded config is checked, so an error names the
cell; the driver's resolve step then resolves each cell once (``orchestrator/resolve.py``). Cells are expanded
from the config as loaded, before the task's defaults are filled in, so a ``data.task`` axis gives each cell its
own task's prompt and rewards. A cell's ``axes`` holds the values as the config typed them (``1e-5`` written as a
string is the float 1e-05), which is what run ids and run.json use.

Keys may name any setting of a run (``lora.*``, ``grpo.*``, ``allocation.*``, ``model.*``, ``data.*``,
``warm_start.*``, ``rewards``); not ``grid``, ``resources``, ``name`` or ``cache_dir``, which shape the
study rather than a run. Pure: no model, no Ray, no file.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import typing
from dataclasses import dataclass
from typing import Any

from orchestrator.core.config import StudyConfig
from orchestrator.core.contract import MAX_RUN_ID_LENGTH, cell_slug, run_id
from orchestrator.core.errors import ConfigError
from orchestrator.core.typed_yaml import from_dict, to_dict

FIXED_SECTIONS = ("grid", "resources", "tracking", "name", "cache_dir")


@dataclass(frozen=True)
class Cell:
    """One combination of axis values and the config its runs use."""

    axes: dict[str, Any]
    config: StudyConfig

    @property
    def slug(self) -> str:
        """The cell part of its runs' ids ('' without axes)."""
        return cell_slug(self.axes)

    def label(self) -> str:
        """``{lora.rank: 8, grpo.learning_rate: 1e-05}``, or ``(no axes)``."""
        return describe(self.axes)


def describe(axes: dict[str, Any]) -> str:
    """A cell as people write it in YAML.

    >>> describe({"lora.rank": 8, "lora.scaling": "rslora"}), describe({})
    ('{lora.rank: 8, lora.scaling: rslora}', '(no axes)')
    """
    if not axes:
        return "(no axes)"
    return "{" + ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in axes.items()) + "}"


def _field_path(root: type, key: str) -> None:
    """Check that dotted ``key`` names a field of the config tree; ConfigError naming it otherwise."""
    parts = key.split(".")
    if parts[0] in FIXED_SECTIONS:
        raise ConfigError(f"grid.axes.{key}: {parts[0]} cannot be an axis (it shapes the study, not a run); "
                          "vary a run setting such as lora.rank or grpo.learning_rate")
    cls: Any = root
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the config"
            allowed = ", ".join(sorted(fields)) or "none (it is a value, not a section)"
            raise ConfigError(f"grid.axes.{key}: {where} has no key {part!r}; allowed: {allowed}")
        cls = _dataclass_of(typing.get_type_hints(cls)[part])


def _dataclass_of(tp: Any) -> Any:
    """The dataclass inside ``X`` or ``X | None``, else ``tp`` itself."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return tp


def _set(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            section = ".".join(parts[: depth + 1])
            raise ConfigError(f"grid.axes.{key}: {section} is null in this config; set a {section} section "
                              "to vary its keys")
        node = node[part]
    node[parts[-1]] = value


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return to_dict(config)


def typed_axes(cells: list[Cell], keys: typing.Iterable[str]) -> dict[str, list]:
    """``grid.axes`` with each value as the config types it (``1e-5`` written as a string is 1e-05), in order."""
    values: dict[str, list] = {key: [] for key in keys}
    for cell in cells:
        for key, value in cell.axes.items():
            if value not in values[key]:
                values[key].append(value)
    return values


def expand_cells(config: StudyConfig) -> list[Cell]:
    """Every cell of the grid, in axis order (the last axis varies fastest); one cell without axes."""
    axes = config.grid.axes
    if not axes:
        return [Cell({}, config)]
    for key, values in axes.items():
        _field_path(type(config), key)
        if not values:
            raise ConfigError(f"grid.axes.{key}: must list at least one value")
    base = to_dict(config)
    cells, seen, ids = [], {}, {}
    for combination in itertools.product(*axes.values()):
        raw = dict(zip(axes, combination, strict=True))
        data = json.loads(json.dumps(base))  # a deep copy of plain YAML data
        for key, value in raw.items():
            _set(data, key, value)
        try:
            cell_config = from_dict(type(config), data)
        except ConfigError as err:
            raise ConfigError(f"grid.axes: cell {describe(raw)}: {err}") from None
        typed = {key: _get(cell_config, key) for key in axes}
        _check_distinct(config, raw, typed, seen, ids)
        cells.append(Cell(typed, cell_config))
    return cells


def _check_distinct(config: StudyConfig, raw: dict, typed: dict, seen: dict, ids: dict) -> None:
    """Two cells may not be the same settings, give the same run ids, or give run ids too long for a file name."""
    label = json.dumps(typed, sort_keys=True)
    if label in seen:
        raise ConfigError(f"grid.axes: cells {describe(seen[label])} and {describe(raw)} are the same "
                          "settings; list each axis value once")
    seen[label] = raw
    first = run_id(config.grid.strategies[0], config.grid.seeds[0], typed)
    if first in ids:
        raise ConfigError(f"grid.axes: cells {describe(ids[first])} and {describe(raw)} give the same run ids "
                          f"({first}); list values that differ once written into a run id")
    ids[first] = raw
    longest = run_id(max(config.grid.strategies, key=len), max(config.grid.seeds), typed)
    if len(longest) > MAX_RUN_ID_LENGTH:
        raise ConfigError(f"grid.axes: cell {describe(raw)} gives run ids of {len(longest)} characters "
                          f"(at most {MAX_RUN_ID_LENGTH}); use fewer or shorter axis values")
