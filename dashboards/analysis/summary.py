"""Analysis of a study directory: every statistic of the paper, with uncertainty, as one typed summary.

``analyze(DIR)`` reads the Parquet results of the output contract (only the columns it needs), splits the runs
into the study's cells and computes each cell's :class:`~dashboards.analysis.schema.CellSummary`
(:mod:`dashboards.analysis.cell`):

- ``landscape``: the layer-share landscape of the reference strategy ``uniform`` (Eq. 2 importance, shares
  averaged over its seeds): max/min ratio, top-30% share, early/middle/late band shares, temporal
  stability, module, attention and MLP shares;
- ``strategies``: per strategy, pooled accuracy with a 95% Wilson interval, the exact McNemar p-value
  against uniform on items paired by (seed, item), the item-level statistics, trainable params, the max/min
  ratio of its own landscape and the rank-vs-share-shift correlation (the amplification effect);
- ``normalized_control``: the landscape and amplification again with norms divided by
  sqrt(LoRA parameters of the module), for each single module alone, and (``weight_gradient``) on the frozen
  weights' gradient norms where runs measured them (``profile.weight_gradient_every``: rank-invariant);
- ``sft``: the landscape of the SFT warm-start profiles (strategy ``sft``) when there are any;
- ``training``: final training reward per strategy (the paper's "identical reward curves");
- the beyond-the-paper parts (rounds, decomposition, geometry, adalora), the findings in words and the
  comparison with the paper.

The runs of a cell are the ones whose run.json names its axis values (the SFT profile published for the cell
joins it; one without a cell joins every cell). The whole study is a
:class:`~dashboards.analysis.schema.StudySummary`, which writes summary.json (its layout is the schema's).

Anything missing (a table, a run's uniform partner, an empty profile, a failed run) becomes one line in
``warnings`` and everything else is still reported; undefined numbers are None. ``analyze(DIR)`` returns the
summary plus the tables the report draws its figures from; ``summarize(DIR)`` the summary.json data. Pure: it
reads DIR and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dashboards.analysis.aggregate import ProfileAggregates, aggregate_profiles
from dashboards.analysis.cell import analyze_cell
from dashboards.analysis.findings import cell_findings, findings, paper_comparison, stated_verdicts
from dashboards.analysis.load import (
    load_run_records,
    read_components,
    read_rank_steps,
    read_small_table,
)
from dashboards.analysis.profiles import RunMeta
from dashboards.analysis.rank_sweep import rank_sweep_findings, rank_sweeps
from dashboards.analysis.robustness import compare_verdicts, differing_setting, unique_labels
from dashboards.analysis.schema import CellSummary, Replicate, StudySummary, cleaned
from orchestrator.core.axes import describe
from orchestrator.core.contract import COMPLETED, GEOMETRY_SCHEMA, RunRecord, StudyPaths, parse_run_id
from orchestrator.core.errors import StudyError
from orchestrator.core.roles import SFT
from orchestrator.core.study_yaml import StudyRecord, read_study_yaml


@dataclass
class CellAnalysis:
    """One cell: its summary and the tables its figures are drawn from."""

    summary: CellSummary
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    def label(self) -> str:
        return describe(self.summary.axes)


@dataclass
class Analysis:
    """The summary, the warnings, and each cell's long tables (pandas) the report's figures are drawn from."""

    summary: StudySummary
    warnings: list[str]
    cells: list[CellAnalysis] = field(default_factory=list)

    @property
    def frames(self) -> dict[str, pd.DataFrame]:
        """The figure tables of a study without axes (its one cell)."""
        return self.cells[0].frames if len(self.cells) == 1 else {}


@dataclass
class _StudyTables:
    """What :func:`analyze` reads of a study directory, before it is split into cells."""

    runs: dict[str, RunMeta]
    records: dict[str, RunRecord]
    eval: pd.DataFrame | None
    metrics: pd.DataFrame | None
    profiles: ProfileAggregates | None
    components: pd.DataFrame | None
    geometry: pd.DataFrame | None
    rank_steps: pd.DataFrame | None
    run_warnings: list[str]
    profile_warnings: list[str]
    table_warnings: list[str]


def summarize(study_dir: Path, replicates: Sequence[Path] = ()) -> tuple[dict, list[str]]:
    """summary.json's data (the schema's layout; undefined numbers None) and one warning per gap."""
    result = analyze(study_dir, replicates)
    return result.summary.to_json(), result.warnings


def _collect_runs(records: dict[str, RunRecord], warnings: list[str], tables: list[pd.DataFrame | None]
                  ) -> tuple[dict[str, RunMeta], set[str]]:
    """Every run of run.json, eval and metrics; runs whose run.json says they did not complete are excluded."""
    runs: dict[str, RunMeta] = {}
    for rec in records.values():
        runs[rec.run_id] = RunMeta(rec.run_id, rec.strategy, rec.seed,
                                   np.array(rec.allocation) if rec.allocation else None,
                                   rec.trainable_params, rec.lora_params, cell=parse_run_id(rec.run_id)[2],
                                   lora_scaling=_scaling_of(rec), ranks_change=rec.initial_allocation is not None,
                                   profile_source=rec.spec.get("depends_on") or rec.spec.get("profile_path"))
    for table in tables:
        if table is None:
            continue
        codes, uniques = pd.factorize(table["run_id"].astype(str))
        first_row = np.full(len(uniques), -1)
        first_row[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # reversed: the first row's write wins
        for i, run_id in enumerate(uniques):
            if run_id in runs or first_row[i] < 0:
                continue
            row = table.iloc[int(first_row[i])]
            strategy, seed, cell = parse_run_id(run_id)
            seed = int(row["seed"]) if "seed" in row and pd.notna(row["seed"]) else seed
            runs[run_id] = RunMeta(run_id, str(row["strategy"]) if "strategy" in row and pd.notna(row["strategy"])
                                   else strategy, seed, cell=cell)
    excluded = {rid for rid, rec in records.items() if rec.status not in (None, COMPLETED)}
    for run_id in sorted(excluded):
        warnings.append(f"runs: {run_id} has status {records[run_id].status!r}; left out of every statistic")
    return {rid: m for rid, m in runs.items() if rid not in excluded}, excluded


def _scaling_of(record: RunRecord) -> str | None:
    """The run's LoRA scaling convention; run.json files written before it was a choice held the one scale
    alpha/rank of every module (the ``constant`` convention) as a number."""
    scaling = (record.lora or {}).get("scaling")
    if isinstance(scaling, str):
        return scaling
    return "constant" if isinstance(scaling, (int, float)) else None


def _add_profile_runs(runs: dict[str, RunMeta], excluded: set[str], prof: ProfileAggregates) -> None:
    """Runs known only from their profile; the profiles' rank column where run.json has no allocation."""
    for r, run_id in enumerate(prof.run_ids):
        if run_id in excluded:
            continue
        parsed_strategy, parsed_seed, cell = parse_run_id(run_id)
        meta = runs.setdefault(run_id, RunMeta(run_id, prof.strategies[r] or parsed_strategy,
                                               prof.seeds[r] if prof.seeds[r] is not None else parsed_seed,
                                               cell=cell))
        if meta.ranks is None and (prof.profile_rank[r] >= 0).all():
            meta.ranks = prof.profile_rank[r].copy()


def analyze(study_dir: Path, replicates: Sequence[Path] = ()) -> Analysis:
    """The study's summary, its warnings, and the figure tables of each cell; with ``replicates`` (the same
    study run on other machines or kernel settings), each cell's verdicts checked against theirs."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise StudyError(f"analyze: {study_dir} is not a directory; pass the study's output directory")
    paths = StudyPaths(study_dir)
    record = read_study_yaml(paths) or StudyRecord()
    replicate_cells = _replicates(study_dir, record, replicates)  # checked before the expensive part
    tables = _read_study(paths)
    context = _study_context(record)
    cell_list = _cells(tables.runs, tables.records, record.axes)
    with_axes = any(axes for axes, _ in cell_list)
    cells = []
    for axes, run_ids in cell_list:
        cell = _analyze_one_cell(study_dir, tables, axes, run_ids, context,
                                 [(rep, cells.get(describe(axes))) for rep, cells in replicate_cells])
        prefix = f"cell {describe(axes)}: " if with_axes else ""
        tables.profile_warnings += [prefix + w for w in cell.profile_warnings]
        tables.table_warnings += [prefix + w for w in cell.table_warnings]
        cells.append(CellAnalysis(cell.summary, cell.frames))
    warnings = tables.run_warnings + tables.profile_warnings + tables.table_warnings
    summaries = [c.summary for c in cells]
    if with_axes:
        keys = list(record.axes) or next(list(c.axes) for c in summaries if c.axes)
        # A rank sweep is answered first: whether accuracy moves with rank frames every allocation verdict.
        sweeps = rank_sweeps([(c.axes, c) for c in summaries])
        summary = StudySummary(study_dir=str(study_dir), cells=summaries, axes=keys, warnings=list(warnings),
                               findings=rank_sweep_findings(sweeps) + cell_findings([(c.label(), c.summary)
                                                                                     for c in cells]),
                               rank_sweeps=sweeps)
    else:
        summary = StudySummary(study_dir=str(study_dir), cells=summaries, findings=list(summaries[0].findings),
                               warnings=list(warnings))
    return Analysis(summary=summary, warnings=warnings, cells=cells)


def _read_study(paths: StudyPaths) -> _StudyTables:
    """Every table of the study, each read once; runs whose run.json says they did not complete left out."""
    run_warnings: list[str] = []
    profile_warnings: list[str] = []
    table_warnings: list[str] = []
    records = load_run_records(paths, run_warnings)
    # The profiles are read and reduced in a worker thread while this one does the small tables: pyarrow
    # and numpy's large loops release the GIL, so the two overlap on a multi-core machine.
    with ThreadPoolExecutor(max_workers=1) as pool:
        profiles_done = pool.submit(aggregate_profiles, paths.table_dir("profiles"), profile_warnings,
                                    {rid for rid, rec in records.items() if rec.allocation is not None})
        eval_df = read_small_table(paths.table_dir("eval"), ("run_id", "item", "correct"),
                                   ("strategy", "seed", "format_ok"), table_warnings, "eval")
        metrics_df = read_small_table(paths.table_dir("metrics"), ("run_id", "step"),
                                      ("strategy", "seed", "reward", "reward_correctness", "reward_format"),
                                      table_warnings, "metrics")
        components_df = read_components(paths.table_dir("profiles"))
        geometry_df = (read_small_table(paths.table_dir("geometry"), GEOMETRY_SCHEMA.names, (), table_warnings,
                                        "geometry") if paths.table_dir("geometry").is_dir() else None)
        runs, excluded = _collect_runs(records, run_warnings, [eval_df, metrics_df])
        if eval_df is not None:
            eval_df = eval_df[~eval_df["run_id"].isin(excluded)]
        if metrics_df is not None:
            metrics_df = metrics_df[~metrics_df["run_id"].isin(excluded)]
        prof = profiles_done.result()
    if prof is not None:
        _add_profile_runs(runs, excluded, prof)
    rank_steps = read_rank_steps(paths.table_dir("profiles"), [rid for rid, m in runs.items() if m.ranks_change])
    return _StudyTables(runs, records, eval_df, metrics_df, prof, components_df, geometry_df, rank_steps,
                        run_warnings, profile_warnings, table_warnings)


def _replicates(study_dir: Path, record: StudyRecord, dirs: Sequence[Path]
                ) -> list[tuple[Replicate, dict[str, CellSummary]]]:
    """Each replicate (another run of this study) and its cells' summaries by cell; a directory that is not a
    study, or holds another study, is a StudyError naming it and the first setting that differs."""
    out = []
    for label, path in zip(unique_labels([Path(d).name for d in dirs]), dirs, strict=True):
        path = Path(path)
        other = read_study_yaml(StudyPaths(path)) if path.is_dir() else None
        if other is None:
            raise StudyError(f"analyze --replicate {path}: not a study directory (no study.yaml)")
        if path.resolve() == study_dir.resolve():
            raise StudyError(f"analyze --replicate {path}: that is the study itself; pass another run of it")
        differs = differing_setting(record.config, other.config)
        if differs is not None:
            raise StudyError(f"analyze --replicate {path}: another study, not a replicate ({differs})")
        records = load_run_records(StudyPaths(path), [])
        cpu = next((rec.cpu for rec in records.values() if rec.cpu), None)
        cells = {describe(c.axes): c for c in analyze(path).summary.cells}
        out.append((Replicate(label=label, study_dir=str(path), cpu=cpu), cells))
    return out


def _analyze_one_cell(study_dir: Path, tables: _StudyTables, axes: dict, run_ids: list[str], context: dict,
                      replicates: list[tuple[Replicate, CellSummary | None]]):
    """One cell's result, its summary cleaned (NaN as None), its verdicts checked against the replicates' and
    its findings in words."""
    members = {rid: tables.runs[rid] for rid in run_ids}
    result = analyze_cell(study_dir, members, _rows_of(tables.eval, members), _rows_of(tables.metrics, members),
                          _profiles_of(tables.profiles, members), _rows_of(tables.components, members),
                          _rows_of(tables.geometry, members), _rows_of(tables.rank_steps, members))
    summary = cleaned(result.summary)
    summary.axes, summary.run_ids = dict(axes), list(run_ids)
    if replicates:
        summary.robustness = compare_verdicts(stated_verdicts(summary), [
            (rep, None if theirs is None else stated_verdicts(theirs)) for rep, theirs in replicates])
    summary.findings = findings(summary)
    summary.paper_comparison = paper_comparison(summary, context)
    result.summary = summary
    return result


def _study_context(record: StudyRecord) -> dict:
    """What the paper comparison says the study is: the model, the task, the GRPO steps (from study.yaml)."""
    config = record.config
    model, data = config.get("model") or {}, config.get("data") or {}
    build = model.get("build")
    label = (f"a {build.get('family', 'qwen2')} model of {build.get('num_layers')} layers and hidden size "
             f"{build.get('hidden_size')}, built and warm-started here" if isinstance(build, dict)
             else str(model.get("name_or_path") or "the model"))
    task = str(data.get("task") or "gsm8k")
    description = record.task_descriptions.get(task, task)
    return {"model": label, "task": f"the {task} task" + (f" ({description[0].lower()}{description[1:]})"
                                                          if description != task else ""),
            "steps": (config.get("grpo") or {}).get("max_steps")}


def _cell_order(axes: dict, study_axes: dict[str, list]) -> tuple:
    """Sort key of a cell: each axis value's position in study.yaml's list, then the value itself."""
    key = []
    for name, value in axes.items():
        listed = study_axes.get(name, [])
        key.append((listed.index(value) if value in listed else len(listed), type(value).__name__, str(value)))
    return tuple(key)


def _cells(runs: dict[str, RunMeta], records: dict[str, RunRecord],
           study_axes: dict[str, list]) -> list[tuple[dict, list[str]]]:
    """(axis values, run ids) per cell, in the order of the study's axis values (study.yaml).

    A run without a record takes its cell from its run id; an SFT profile without a cell joins every cell.
    """
    axes_of: dict[str, dict] = {}
    for record in records.values():
        axes_of.setdefault(parse_run_id(record.run_id)[2], dict(record.axes))
    members: dict[str, list[str]] = {}
    shared = []
    for run_id, meta in runs.items():
        if meta.cell == "" and meta.strategy == SFT and axes_of.keys() - {""}:
            shared.append(run_id)
            continue
        members.setdefault(meta.cell, []).append(run_id)
        axes_of.setdefault(meta.cell, {})
    order = sorted((slug for slug in axes_of if slug in members), key=lambda c: _cell_order(axes_of[c], study_axes))
    return [(axes_of.get(slug, {}), members.get(slug, []) + shared) for slug in order or [""]]


def _rows_of(table: pd.DataFrame | None, runs: dict[str, RunMeta]) -> pd.DataFrame | None:
    return None if table is None else table[table["run_id"].isin(list(runs))]


def _profiles_of(prof: ProfileAggregates | None, runs: dict[str, RunMeta]) -> ProfileAggregates | None:
    if prof is None:
        return None
    rows = [r for r, rid in enumerate(prof.run_ids) if rid in runs]
    return prof.select(rows) if rows else None
