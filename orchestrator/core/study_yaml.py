"""DIR/study.yaml, the study's own record: its resolved config, the versions that ran it, how to describe it.

```
config:             the resolved config as plain YAML data; grid: the union of every invocation's grid
versions:           package versions of the driver that created it
git_commit:         rankstudy's commit, when run from a checkout
created_at:
task_descriptions:  {task name: one-line description} of the tasks the cells use (the report quotes them)
```

:func:`record_study` writes it when a study directory is new and otherwise compares: a directory that holds a
study with other settings is refused in one line naming the first difference; only the grid (strategies, seeds,
axis values), resources and tracking may change between invocations, and the file is rewritten only when the grid grows,
so re-running the same command leaves it byte-identical. :func:`read_study_yaml` is the one reader (the report,
the analysis); it never raises for a missing or unreadable file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.core.contract import StudyPaths, atomic_write_text
from orchestrator.core.errors import StudyError
from orchestrator.core.typed_yaml import to_dict

if TYPE_CHECKING:
    from orchestrator.core.plan import ResolvedStudy

# Sections that may change between invocations on the same DIR: they decide which cells run, where, and who
# watches them, not what a cell computes. Growing the grid (more seeds, another strategy) runs only the new cells.
MUTABLE_SECTIONS = ("grid", "resources", "tracking")


@dataclass
class StudyRecord:
    """The parsed DIR/study.yaml (keys this version does not know are kept in ``extra``)."""

    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    created_at: str | None = None
    task_descriptions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        """The study's ``name`` (under ``config``, or at the top level as synthetic studies write it)."""
        for section in (self.config, self.extra):
            if isinstance(section.get("name"), str):
                return section["name"]
        return None

    @property
    def axes(self) -> dict[str, list]:
        """The study's ``grid.axes`` ({} without axes)."""
        axes = (self.config.get("grid") or {}).get("axes") or {}
        return {str(k): list(v) for k, v in axes.items()} if isinstance(axes, dict) else {}

    def to_yaml(self) -> str:
        data = {"config": self.config, "versions": self.versions, "git_commit": self.git_commit,
                "created_at": self.created_at}
        if self.task_descriptions:
            data["task_descriptions"] = self.task_descriptions
        return yaml.safe_dump({**data, **self.extra}, sort_keys=False)

    @classmethod
    def from_data(cls, data: Any) -> StudyRecord:
        if not isinstance(data, Mapping):
            return cls()
        known = ("config", "versions", "git_commit", "created_at", "task_descriptions")

        def mapping(key: str) -> dict:
            value = data.get(key)
            return dict(value) if isinstance(value, Mapping) else {}

        return cls(config=mapping("config"), versions=mapping("versions"), git_commit=data.get("git_commit"),
                   created_at=data.get("created_at"), task_descriptions=mapping("task_descriptions"),
                   extra={k: v for k, v in data.items() if k not in known})


def read_study_yaml(paths: StudyPaths) -> StudyRecord | None:
    """DIR/study.yaml, or None when it is missing or not YAML."""
    try:
        return StudyRecord.from_data(yaml.safe_load(paths.study_yaml.read_text()))
    except (OSError, yaml.YAMLError):
        return None


def record_study(paths: StudyPaths, study: ResolvedStudy, *, normalise: Callable[[dict], dict],
                 versions: dict[str, str], git_commit: str | None, task_descriptions: dict[str, str]) -> None:
    """Write DIR/study.yaml for a new directory, or check it holds this study and grow its grid.

    ``normalise`` resolves a recorded config as this version would (new settings at their defaults, the task's
    defaults filled in), so an upgrade of rankstudy does not make an existing study look like a different one.
    """
    resolved = to_dict(study.config)
    resolved["grid"]["axes"] = study.axes()  # as the runs see them, so unions compare like with like
    if not paths.study_yaml.exists():
        record = StudyRecord(config=resolved, versions=versions, git_commit=git_commit,
                             created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), task_descriptions=task_descriptions)
        atomic_write_text(paths.study_yaml, record.to_yaml())
        return
    existing = yaml.safe_load(paths.study_yaml.read_text()) or {}
    old = normalise(existing.get("config") or {})
    fixed_old = {k: v for k, v in old.items() if k not in MUTABLE_SECTIONS}
    fixed_new = {k: v for k, v in resolved.items() if k not in MUTABLE_SECTIONS}
    if fixed_old != fixed_new:
        raise StudyError(
            f"{paths.root} holds a study with a different config ({_first_difference(fixed_old, fixed_new)}); "
            "use another --output or restore the original settings to resume it"
        )
    grid = _grown_grid(old.get("grid", {}), resolved["grid"])
    if grid == old.get("grid") and all(resolved[k] == old.get(k) for k in MUTABLE_SECTIONS if k != "grid"):
        return
    existing["config"] = {**resolved, "grid": grid}
    atomic_write_text(paths.study_yaml, yaml.safe_dump(existing, sort_keys=False))


def _grown_grid(old: dict, new: dict) -> dict:
    """The union of two grids (strategies, seeds, axis values); a changed set of axis keys is refused."""
    old_axes, new_axes = old.get("axes") or {}, new.get("axes") or {}
    if list(old_axes) != list(new_axes):
        raise StudyError(
            f"grid.axes: this study directory's axes are {list(old_axes) or 'none'}, the config's are "
            f"{list(new_axes) or 'none'}; a study may gain axis values but not axes (use another --output)"
        )
    grid = {key: _union(old.get(key, []), value) for key, value in new.items() if key != "axes"}
    grid["axes"] = {key: _union(old_axes[key], values) for key, values in new_axes.items()}
    return grid


def _union(old: list, new: list) -> list:
    return list(old) + [item for item in new if item not in old]


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} there, {b!r} now"
    return ""
