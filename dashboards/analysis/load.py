"""Reading a study directory for the analysis: run.json files and the small Parquet tables, column by column.

The profiles, the one large table, are reduced as they are read (:mod:`dashboards.analysis.aggregate`); here
are the readers of everything else (eval, metrics, geometry, the decomposed and rank-changing profile rows).
Everything a reader cannot use (an unreadable or empty file, a missing column) becomes one warning line
and is skipped; nothing here raises for a bad study directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.core.contract import TOTAL, RunRecord, StudyPaths
from orchestrator.core.importance import PROFILE_COLUMNS

PROFILE_REQUIRED = PROFILE_COLUMNS  # what Eq. 2 needs (orchestrator.core.importance)
PROFILE_OPTIONAL = ("strategy", "seed", "rank")


def load_run_records(paths: StudyPaths, warnings: list[str]) -> dict[str, RunRecord]:
    """Every readable run.json, keyed by run id (an unreadable one is a warning; its run's metadata is skipped)."""
    records: dict[str, RunRecord] = {}
    if not paths.runs_dir.is_dir():
        warnings.append(f"runs: {paths.runs_dir} is missing; allocations come from the profiles' rank column, "
                        "trainable params and the per-parameter control are unavailable")
        return records
    for path in sorted(paths.runs_dir.glob("*/run.json")):
        try:
            record = RunRecord.from_json(json.loads(path.read_text()), fallback_run_id=path.parent.name)
            records[record.run_id] = record
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            warnings.append(f"runs: {path} is not a readable run.json ({err}); that run's metadata is skipped")
    if not records:
        warnings.append(f"runs: no run.json under {paths.runs_dir}; allocations come from the profiles' rank column")
    return records


def usable_parquet_files(table_dir: Path, required: tuple[str, ...], warnings: list[str],
                         label: str) -> list[tuple[Path, pa.Schema]]:
    """Files of a table with their schemas; unreadable, empty or incomplete files become warnings."""
    if not table_dir.is_dir():
        warnings.append(f"{label}: {table_dir} is missing")
        return []
    found = []
    for path in sorted(table_dir.glob("*.parquet")):
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as err:
            warnings.append(f"{label}: {path.name} is not readable Parquet ({err}); skipped")
            continue
        missing = [c for c in required if c not in schema.names]
        if missing:
            warnings.append(f"{label}: {path.name} lacks column(s) {', '.join(missing)}; skipped")
        elif meta.num_rows == 0:
            warnings.append(f"{label}: {path.name} is empty (0 rows); that run has no {label} data")
        else:
            found.append((path, schema))
    if not found and not any(w.startswith(f"{label}: ") for w in warnings):
        warnings.append(f"{label}: no Parquet files in {table_dir}")
    return found


def read_small_table(table_dir: Path, required: tuple[str, ...], optional: tuple[str, ...],
                     warnings: list[str], label: str) -> pd.DataFrame | None:
    """A small table (eval, metrics) as one DataFrame, reading only the named columns.

    One dataset scan; a file lacking an optional column gets nulls there. If the files'
    types conflict (say ``correct`` bool in one and int in another), they are read one by one instead.
    """
    files = usable_parquet_files(table_dir, required, warnings, label)
    if not files:
        return None
    fields = {}
    for _, schema in files:
        for name in (*required, *optional):
            if name in schema.names and name not in fields:
                fields[name] = schema.field(name)
    schema = pa.schema([fields[c] for c in (*required, *optional) if c in fields])
    try:
        # use_threads=False: the files are small, and the shared pyarrow CPU pool is busy with the profiles.
        table = ds.dataset([str(p) for p, _ in files], format="parquet", schema=schema).to_table(use_threads=False)
        return table.to_pandas()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        frames = [pq.read_table(p, columns=[c for c in schema.names if c in sch.names]).to_pandas()
                  for p, sch in files]
        return pd.concat(frames, ignore_index=True)


def read_components(profile_dir: Path) -> pd.DataFrame | None:
    """The decomposed profile rows (component other than ``total``) of DIR/profiles; None when there are none.

    Decomposed steps are every ``profile.decompose_every``-th, so these rows are few; files without the column
    (or unreadable ones, which :func:`aggregate_profiles` already reports) hold none.
    """
    if not profile_dir.is_dir():
        return None
    files = []
    for path in sorted(profile_dir.glob("*.parquet")):
        try:
            if "component" in pq.read_schema(path).names:
                files.append(str(path))
        except (OSError, pa.ArrowException):
            continue
    if not files:
        return None
    table = ds.dataset(files, format="parquet").to_table(
        columns=["run_id", "step", "layer", "module", "grad_norm", "component"],
        filter=ds.field("component") != TOTAL)
    return table.to_pandas() if table.num_rows else None


def read_rank_steps(profile_dir: Path, run_ids: list[str]) -> pd.DataFrame | None:
    """Per (run, step, layer): the layer's total rank over modules, from the ``total`` rows of these runs' profiles
    (``<run_id>.parquet``). For strategies whose ranks change while training (adalora); None if none is readable."""
    frames = []
    for run_id in run_ids:
        path = profile_dir / f"{run_id}.parquet"
        try:
            names = pq.read_schema(path).names
            table = pq.read_table(path, columns=["step", "layer", "rank", *(["component"] if "component" in names
                                                                            else [])])
        except (OSError, pa.ArrowException, KeyError):
            continue  # missing or unreadable: aggregate_profiles has said so
        frame = table.to_pandas()
        if "component" in frame:
            frame = frame[frame["component"] == TOTAL]
        frames.append(frame.groupby(["step", "layer"], as_index=False)["rank"].sum().assign(run_id=run_id))
    return pd.concat(frames, ignore_index=True) if frames else None
