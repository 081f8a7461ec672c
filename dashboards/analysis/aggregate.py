"""The profiles reduced early: DIR/profiles read once into per (run, layer, module) sums and counts.

The profiles are the only large table (paper scale: 3.9M rows; a grid of cells: 19.6M). :func:`aggregate_profiles`
reads only the columns it needs, with the string columns as dictionaries (integer codes, no Python strings), and
reduces the rows with one ``numpy.bincount`` over integer (run, step, layer, module) cell keys, from which it sums:

- per (run, layer, module): sum and count of finite ``grad_norm`` (Eq. 2, module shares, both controls),
- per (run, half, layer, module): the same over the first floor(T/2) profiled steps and the rest
  (temporal stability),
- per (run, step, layer): the sum over modules (the layer x step heatmap),
- per (run, layer, module): sum and count of ``weight_grad_norm`` over the steps that measured it (null elsewhere),
  with the same rule: a measured step with a non-finite value in any module is left out whole (the
  weight-gradient control; absent when no file has the column).

Non-finite norms are kept in the files (flagged) but left out of sums and counts here, so a mean over a
run's steps is the mean of its finite values; the caller warns about them with the counts returned. A file
that cannot be used is a warning (:func:`dashboards.analysis.load.usable_parquet_files`), never an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dashboards.analysis.load import PROFILE_OPTIONAL, PROFILE_REQUIRED, usable_parquet_files
from orchestrator.core.contract import IMPORTANCE_MEASURES, TOTAL
from orchestrator.core.importance import diverged_at

WEIGHT_COLUMN = IMPORTANCE_MEASURES["weight_grad"]


@dataclass
class ProfileAggregates:
    """The profiles reduced per run; arrays are indexed [run, ...] in the order of ``run_ids``."""

    run_ids: list[str]
    strategies: list[str | None]  # from the strategy column (None where it was not read)
    seeds: list[int | None]
    modules: list[str]
    num_layers: int
    steps: np.ndarray  # the step value of each column of ``step_layer_sum``
    sum_lm: np.ndarray  # (R, L, M) sum of finite grad_norm
    count_lm: np.ndarray  # (R, L, M) number of finite grad_norm
    half_sum: np.ndarray  # (R, 2, L, M): first floor(T/2) profiled steps, then the rest
    half_count: np.ndarray
    step_layer_sum: np.ndarray  # (R, S, L) sum over modules of finite grad_norm
    step_present: np.ndarray  # (R, S) the run has rows at that step
    profile_rank: np.ndarray  # (R, L) the rank column (-1 where it was not read)
    nonfinite: np.ndarray  # (R,) rows with a non-finite grad_norm (their steps are left out whole)
    rows: np.ndarray  # (R,) rows read
    files: list[str] = field(default_factory=list)
    diverged_at: dict[str, int] = field(default_factory=dict)  # run id -> the step its norms stayed non-finite from
    weight_sum_lm: np.ndarray | None = None  # (R, L, M) sum of finite weight_grad_norm on measured steps
    weight_count_lm: np.ndarray | None = None

    def select(self, rows: list[int]) -> ProfileAggregates:
        """The aggregates of some runs only (rows of the run axis, in the given order)."""
        idx = np.asarray(rows, dtype=np.int64)
        return dataclasses.replace(
            self, run_ids=[self.run_ids[r] for r in rows], strategies=[self.strategies[r] for r in rows],
            seeds=[self.seeds[r] for r in rows], sum_lm=self.sum_lm[idx], count_lm=self.count_lm[idx],
            half_sum=self.half_sum[idx], half_count=self.half_count[idx], step_layer_sum=self.step_layer_sum[idx],
            step_present=self.step_present[idx], profile_rank=self.profile_rank[idx], nonfinite=self.nonfinite[idx],
            rows=self.rows[idx],
            weight_sum_lm=None if self.weight_sum_lm is None else self.weight_sum_lm[idx],
            weight_count_lm=None if self.weight_count_lm is None else self.weight_count_lm[idx])


def _dictionary_lookup(array: pa.DictionaryArray, index: dict[str, int]) -> np.ndarray:
    """Study-wide codes (into ``index``, which grows) of one batch's dictionary values."""
    return np.array([index.setdefault(v, len(index)) for v in array.dictionary.to_pylist()], dtype=np.int64)


def _apply_codes(out: np.ndarray, array: pa.DictionaryArray, lookup: np.ndarray, scale: int,
                 set_first: bool = False) -> None:
    """``out += lookup[codes] * scale`` (or ``=`` with ``set_first``) for one batch, without a gather when
    the batch holds one value (a run's file) or its dictionary already is in study order (modules)."""
    if lookup.size == 1:
        if set_first:
            out.fill(lookup[0] * scale)
        else:
            out += lookup[0] * scale
        return
    indices = array.indices.to_numpy(zero_copy_only=False)
    values = indices if np.array_equal(lookup, np.arange(lookup.size)) else lookup[indices]
    if scale != 1:
        values = values * scale
    if set_first:
        out[:] = values
    else:
        out += values


def _compact(values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values (sorted) and each row's index among them for non-negative ints below ``size``,
    in O(n) with a lookup table (no sort) when ``size`` is not much larger than the data, else np.unique.

    >>> _compact(np.array([7, 3, 7, 5]), 8)
    (array([3, 5, 7]), array([2, 0, 2, 1]))
    """
    if size > 8 * values.size + 1_000_000:
        return np.unique(values, return_inverse=True)
    present = np.zeros(size, dtype=bool)
    present[values] = True
    index = np.cumsum(present) - 1
    return np.flatnonzero(present), index[values]


def _profile_meta(files: list[tuple[Path, pa.Schema]]) -> dict[str, tuple[str | None, int | None, dict[int, int]]]:
    """Per run in these files: strategy and seed (first row) and the rank per layer, where columns exist."""
    out: dict[str, tuple[str | None, int | None, dict[int, int]]] = {}
    for path, schema in files:
        columns = ["run_id", "layer", *[c for c in PROFILE_OPTIONAL if c in schema.names]]
        frame = pq.read_table(path, columns=columns).to_pandas()
        for run_id, rows in frame.groupby("run_id", sort=False):
            first = rows.iloc[0]
            strategy = str(first["strategy"]) if "strategy" in rows and pd.notna(first["strategy"]) else None
            seed = int(first["seed"]) if "seed" in rows and pd.notna(first["seed"]) else None
            ranks = ({int(k): int(v) for k, v in rows.groupby("layer")["rank"].first().items() if pd.notna(v)}
                     if "rank" in rows else {})
            out[str(run_id)] = (strategy, seed, ranks)
    return out


def aggregate_profiles(profile_dir: Path, warnings: list[str], known_runs: set[str] = frozenset()
                       ) -> ProfileAggregates | None:
    """Read DIR/profiles once and reduce it to :class:`ProfileAggregates` (None if nothing usable).

    ``known_runs``: run ids whose run.json gives strategy, seed and allocation. The scan reads five columns;
    strategy, seed and rank are read only from files not named after such a run (``<run_id>.parquet``).
    """
    files = usable_parquet_files(profile_dir, PROFILE_REQUIRED, warnings, "profiles")
    if not files:
        return None
    table = _read_total_rows(files, warnings)
    if table is None:
        return None
    (layer_min, layer_max), (step_min, step_max) = (pc.min_max(table[c]).values() for c in ("layer", "step"))
    if layer_min.as_py() < 0 or step_min.as_py() < 0:
        warnings.append("profiles: negative layer or step values; the profiles are skipped")
        return None
    n_layers, n_step_values = layer_max.as_py() + 1, step_max.as_py() + 1
    key, pair_keys, run_index, module_index = _cell_keys(table, n_layers, n_step_values)
    n_runs, n_mod = len(run_index), len(module_index)
    pair_run, pair_step = pair_keys // n_step_values, pair_keys % n_step_values
    dense, counts, pair_rows, pair_nonfinite = _bincount_cells(key, table["grad_norm"].to_numpy(), pair_keys.size,
                                                               n_layers, n_mod)
    weight_sum, weight_count = _weight_sums(table, key, pair_run, n_runs, pair_keys.size, n_layers, n_mod)
    del key  # the largest array (one int64 per row): freed before the per-run sums
    # Eq. 2's rule (orchestrator/core/importance.py): a step with a non-finite norm in any module is left out whole.
    bad_pair = pair_nonfinite > 0
    dense[bad_pair], counts[bad_pair] = 0.0, 0
    diverged = {int(r): diverged_at(pair_step[pair_run == r], bad_pair[pair_run == r])
                for r in np.unique(pair_run[bad_pair])}
    step_layer_sum = np.zeros((n_runs, n_step_values, n_layers))
    step_layer_sum[pair_run, pair_step] = dense.sum(axis=2)
    step_present = np.zeros((n_runs, n_step_values), dtype=bool)
    step_present[pair_run, pair_step] = (pair_rows > 0) & ~bad_pair
    half_sum, half_count, rows, nonfinite = _per_run_halves(dense, counts, pair_rows, pair_nonfinite, pair_run, n_runs)
    # Heatmap columns: only steps some run has.
    used = step_present.any(axis=0)
    strategies, seeds, profile_rank = _profile_columns([(p, sch) for p, sch in files if p.stem not in known_runs],
                                                       run_index, n_layers)
    return ProfileAggregates(
        run_ids=[str(r) for r in run_index], strategies=strategies, seeds=seeds,
        modules=[str(m) for m in module_index], num_layers=n_layers, steps=np.arange(n_step_values)[used],
        sum_lm=half_sum.sum(axis=1), count_lm=half_count.sum(axis=1), half_sum=half_sum, half_count=half_count,
        step_layer_sum=step_layer_sum[:, used], step_present=step_present[:, used], profile_rank=profile_rank,
        nonfinite=nonfinite, rows=rows, files=[p.name for p, _ in files],
        diverged_at={str(list(run_index)[r]): step for r, step in diverged.items() if step is not None},
        weight_sum_lm=weight_sum, weight_count_lm=weight_count,
    )


def _weight_sums(table: pa.Table, key: np.ndarray, pair_run: np.ndarray, n_runs: int, n_pairs: int, n_layers: int,
                 n_mod: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(R, L, M) sums and counts of ``weight_grad_norm`` over the measured steps (null rows are not measured);
    a measured step with a non-finite value in any module is left out whole. (None, None) without any value."""
    if WEIGHT_COLUMN not in table.column_names or table[WEIGHT_COLUMN].null_count == table.num_rows:
        return None, None
    column = table[WEIGHT_COLUMN]
    measured = pc.is_valid(column).to_numpy(zero_copy_only=False)
    values = pc.fill_null(column, np.nan).to_numpy(zero_copy_only=False)
    dense, counts, _rows, pair_nonfinite = _bincount_cells(key[measured], values[measured], n_pairs, n_layers, n_mod)
    bad_pair = pair_nonfinite > 0
    dense[bad_pair], counts[bad_pair] = 0.0, 0
    sums = np.zeros((n_runs, n_layers, n_mod))
    count = np.zeros((n_runs, n_layers, n_mod), dtype=np.int64)
    np.add.at(sums, pair_run, dense)
    np.add.at(count, pair_run, counts)
    return sums, count


def _read_total_rows(files: list[tuple[Path, pa.Schema]], warnings: list[str]) -> pa.Table | None:
    """The five Eq. 2 columns of every file's ``total`` rows, strings as dictionaries; rows with a null key
    are left out (a warning)."""
    columns = list(PROFILE_REQUIRED)
    first = files[0][1]
    weighted = any(WEIGHT_COLUMN in file_schema.names for _, file_schema in files)
    string_cols = [c for c in ("run_id", "strategy", "module") if c in columns]
    # The first file's types, with strings as dictionaries (integer codes, no Python strings); other
    # files are cast to it while scanning.
    schema = pa.schema([pa.field(c, pa.dictionary(pa.int32(), pa.string())) if c in string_cols
                        else first.field(c) for c in columns])
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=string_cols))
    dataset_filter = None
    if any("component" in file_schema.names for _, file_schema in files):
        # Eq. 2, the landscape and amplification read the ordinary gradient only (contract: component total);
        # rows of files written before the column read as total.
        schema = schema.append(pa.field("component", pa.string()))
        dataset_filter = ds.field("component").is_null() | (ds.field("component") == TOTAL)
    if weighted:  # files without the column read it as null (not measured)
        schema = schema.append(pa.field(WEIGHT_COLUMN, pa.float64()))
        columns.append(WEIGHT_COLUMN)
    table = ds.dataset([str(p) for p, _ in files], format=fmt, schema=schema).to_table(columns=columns,
                                                                                        filter=dataset_filter)
    if any(table[c].null_count for c in ("run_id", "step", "layer", "module")):
        valid = pc.and_(pc.and_(pc.is_valid(table["run_id"]), pc.is_valid(table["module"])),
                        pc.and_(pc.is_valid(table["step"]), pc.is_valid(table["layer"])))
        warnings.append(f"profiles: {table.num_rows - pc.sum(valid).as_py()} row(s) with a null run_id, step, "
                        "layer or module; skipped")
        table = table.filter(valid)
    return table if table.num_rows else None


def _cell_keys(table: pa.Table, n_layers: int, n_step_values: int
               ) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, int]]:
    """Every row's int64 cell key for (run, step, layer, module) (pair index * L * M + layer * M + module), the
    (run, step) pairs present (as run * S + step, in key order), and the study-wide run and module codes.

    One bincount over the keys then gives every aggregate by summing axes. Keys are computed batch by batch
    into one array (cache-friendly, no full-size temporaries). A (run, step) pair is run * S + step; pairs are
    run-major and in step order, so each run's pairs are contiguous. When runs have (nearly) every step the
    pairs are all (run, step) combinations (one pass); otherwise absent pairs are compacted away first (two).
    """
    batches = table.to_batches()
    run_index: dict[str, int] = {}
    module_index: dict[str, int] = {}
    run_codes = [_dictionary_lookup(b.column("run_id"), run_index) for b in batches]
    module_codes = [_dictionary_lookup(b.column("module"), module_index) for b in batches]
    n_runs, n_mod = len(run_index), len(module_index)
    dense_pairs = n_runs * n_step_values * n_layers * n_mod <= 2 * table.num_rows + 1_000_000
    key = np.empty(table.num_rows, dtype=np.int64)

    def add_layer_and_module(k: np.ndarray, batch: pa.RecordBatch, modules_b: np.ndarray) -> None:
        k *= n_layers
        k += batch.column("layer").to_numpy(zero_copy_only=False)
        k *= n_mod
        _apply_codes(k, batch.column("module"), modules_b, 1)

    offset = 0
    for batch, runs_b, modules_b in zip(batches, run_codes, module_codes, strict=True):
        k = key[offset:offset + batch.num_rows]
        _apply_codes(k, batch.column("run_id"), runs_b, n_step_values, set_first=True)
        k += batch.column("step").to_numpy(zero_copy_only=False)
        if dense_pairs:
            add_layer_and_module(k, batch, modules_b)
        offset += batch.num_rows
    if dense_pairs:
        return key, np.arange(n_runs * n_step_values), run_index, module_index
    pair_keys, key = _compact(key, n_runs * n_step_values)
    offset = 0
    for batch, modules_b in zip(batches, module_codes, strict=True):
        add_layer_and_module(key[offset:offset + batch.num_rows], batch, modules_b)
        offset += batch.num_rows
    return key, pair_keys, run_index, module_index


def _bincount_cells(key: np.ndarray, grad: np.ndarray, n_pairs: int, n_layers: int,
                    n_mod: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(P, L, M) sums and counts of the finite norms, and per pair its rows and non-finite rows."""
    finite = np.isfinite(grad)
    shape, cells = (n_pairs, n_layers, n_mod), n_pairs * n_layers * n_mod
    if finite.all():
        dense = np.bincount(key, weights=grad, minlength=cells).reshape(shape)
        counts = np.bincount(key, minlength=cells).reshape(shape)
        return dense, counts, counts.sum(axis=(1, 2)), np.zeros(n_pairs, dtype=np.int64)
    dense = np.bincount(key[finite], weights=grad[finite], minlength=cells).reshape(shape)
    counts = np.bincount(key[finite], minlength=cells).reshape(shape)
    pair_rows = np.bincount(key // (n_layers * n_mod), minlength=n_pairs)
    return dense, counts, pair_rows, np.bincount(key[~finite] // (n_layers * n_mod), minlength=n_pairs)


def _per_run_halves(dense: np.ndarray, counts: np.ndarray, pair_rows: np.ndarray, pair_nonfinite: np.ndarray,
                    pair_run: np.ndarray, n_runs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per run: sums and counts over the first floor(T/2) of its profiled steps (T = its number of distinct
    steps) and over the rest (their sum is the whole run), its rows and its non-finite rows."""
    _, n_layers, n_mod = dense.shape
    run_start = np.searchsorted(pair_run, np.arange(n_runs + 1))  # run r owns pairs [start[r], start[r+1])
    pair_present = pair_rows > 0
    half_sum = np.zeros((n_runs, 2, n_layers, n_mod))
    half_count = np.zeros((n_runs, 2, n_layers, n_mod), dtype=np.int64)
    rows = np.zeros(n_runs, dtype=np.int64)
    nonfinite = np.zeros(n_runs, dtype=np.int64)
    for r in range(n_runs):
        first, stop = run_start[r], run_start[r + 1]
        present = np.flatnonzero(pair_present[first:stop])
        cut = first + (present[present.size // 2 - 1] + 1 if present.size >= 2 else 0)
        half_sum[r, 0], half_sum[r, 1] = dense[first:cut].sum(axis=0), dense[cut:stop].sum(axis=0)
        half_count[r, 0], half_count[r, 1] = counts[first:cut].sum(axis=0), counts[cut:stop].sum(axis=0)
        rows[r], nonfinite[r] = pair_rows[first:stop].sum(), pair_nonfinite[first:stop].sum()
    return half_sum, half_count, rows, nonfinite


def _profile_columns(files: list[tuple[Path, pa.Schema]], run_index: dict[str, int],
                     n_layers: int) -> tuple[list[str | None], list[int | None], np.ndarray]:
    """Strategy, seed and rank per layer of the runs in ``files`` (those without a run.json, e.g. SFT profiles);
    None / -1 for every other run."""
    n_runs = len(run_index)
    strategies: list[str | None] = [None] * n_runs
    seeds: list[int | None] = [None] * n_runs
    profile_rank = np.full((n_runs, n_layers), -1, dtype=np.int64)
    for run_id, (strategy, seed, ranks) in _profile_meta(files).items():
        r = run_index.get(run_id)
        if r is not None:
            strategies[r], seeds[r] = strategy, seed
            for layer, rank in ranks.items():
                if 0 <= layer < n_layers:
                    profile_rank[r, layer] = rank
    return strategies, seeds, profile_rank


