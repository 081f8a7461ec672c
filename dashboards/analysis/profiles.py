"""Layer importance (Eq. 2), the landscape and the amplification statistics from aggregated profiles.

S(l) per run comes from :func:`orchestrator.importance.layer_importance` (Eq. 2, its one implementation). ``importance_stats``
computes, for one notion of importance (Eq. 2 itself, the per-parameter normalised control, or one module
alone), the landscape of the profiling strategy ``uniform`` and, per strategy, the seed-averaged
max/min ratio and the correlation between allocated rank and share shift against the uniform run of the
same seed. It returns the numbers and the long tables the figures are drawn from.

Simplified: every run of a cell must have the same number of layers (one model per cell).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dashboards.analysis import stats as st
from orchestrator.importance import layer_importance
from orchestrator.strategies import REFERENCE, SFT


@dataclass
class RunMeta:
    """One run as the analysis sees it: identity, cell, allocated rank per layer and LoRA parameters."""

    run_id: str
    strategy: str
    seed: int | None
    ranks: np.ndarray | None = None  # allocated rank per layer (run.json, else the profiles' rank column)
    trainable_params: int | None = None
    lora_params: dict[str, list[int]] | None = None
    cell: str = ""  # the cell part of the run id ('' without axes)
    lora_scaling: str | None = None  # run.json's LoRA scaling convention (orchestrator.lora_scaling)


def _shares_ok(share: np.ndarray) -> bool:
    return bool(share.size) and bool(np.all(np.isfinite(share)))


def landscape_of(share: np.ndarray) -> dict:
    """max/min, top-30% share, band shares and the layer shares of one (seed-averaged) share vector."""
    if not _shares_ok(share):
        return {"max_min_ratio": math.nan, "top30_share": math.nan,
                "band_share": {"early": math.nan, "middle": math.nan, "late": math.nan}, "layer_share": []}
    return {"max_min_ratio": st.max_min_ratio(share), "top30_share": st.top_share(share, 0.3),
            "band_share": st.band_share(share), "layer_share": [float(x) for x in share]}


def _long_table(runs: dict[str, RunMeta], values: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """One row per (run, layer): strategy, run_id, seed, layer and one column per entry of ``values``.

    >>> _long_table({"a-seed0": RunMeta("a-seed0", "a", 0)}, {"share": {"a-seed0": np.array([0.4, 0.6])}})
      strategy   run_id  seed  layer  share
    0        a  a-seed0     0      0    0.4
    1        a  a-seed0     0      1    0.6
    """
    ids = list(runs)
    sizes = [len(next(iter(values.values()))[r]) for r in ids] if values else []
    data = {
        "strategy": np.repeat(np.array([runs[r].strategy for r in ids], dtype=object), sizes),
        "run_id": np.repeat(np.array(ids, dtype=object), sizes),
        "seed": pd.array(np.repeat(np.array([runs[r].seed for r in ids], dtype=object), sizes), dtype="Int64"),
        "layer": np.concatenate([np.arange(n) for n in sizes]) if sizes else np.array([], dtype=int),
    }
    for name, per_run in values.items():
        data[name] = np.concatenate([np.asarray(per_run[r]) for r in ids]) if ids else np.array([])
    return pd.DataFrame(data)


def importance_stats(importance: dict[str, np.ndarray], runs: dict[str, RunMeta], notes: list[str] | None,
                     label: str = "", tables: bool = True) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Landscape (uniform) and per-strategy amplification for one importance measure.

    ``importance``: S(l) per run id. ``notes``: where to report a run lacking its uniform partner or a
    usable allocation (None: stay quiet, for the controls that repeat the main analysis).
    Returns (summary part, shares table, amplification table); the tables are empty unless ``tables``.
    """
    label = f" ({label})" if label else ""
    amp_parts: list[tuple[str, RunMeta, np.ndarray, np.ndarray, np.ndarray]] = []
    shares: dict[str, np.ndarray] = {}
    for run_id, imp in importance.items():
        share = st.shares(imp)
        if not _shares_ok(share):
            if notes is not None:
                why = ("every grad_norm is 0: the run got no gradient signal (e.g. all-equal rewards in every "
                       "group)" if np.nansum(np.abs(imp)) == 0 else "a layer lacks a module the others have")
                notes.append(f"profiles: {run_id}: {why}; left out of the landscape and amplification")
            continue
        shares[run_id] = share
    shares_df = _long_table({r: runs[r] for r in shares}, {"share": shares}) if tables else pd.DataFrame()

    by_strategy: dict[str, list[str]] = {}
    for run_id in shares:
        by_strategy.setdefault(runs[run_id].strategy, []).append(run_id)
    mean_share = {s: np.mean([shares[r] for r in ids], axis=0) for s, ids in by_strategy.items()}
    uniform_by_seed = {runs[r].seed: r for r in by_strategy.get(REFERENCE, [])}

    per_strategy: dict[str, dict] = {}
    for strategy, ids in by_strategy.items():
        # Averaging shares over seeds flattens the landscape; each seed's own ratio is reported beside it.
        per_seed = {str(runs[r].seed): st.max_min_ratio(shares[r]) for r in ids if runs[r].seed is not None}
        entry = {"max_min_ratio": st.max_min_ratio(mean_share[strategy]), "n_profiled_runs": len(ids),
                 "layer_share": [float(x) for x in mean_share[strategy]], "max_min_ratio_per_seed": per_seed,
                 "max_min_ratio_seed_range": _range(per_seed.values())}
        if strategy in (REFERENCE, SFT):
            entry["rank_shift_corr"] = None
            per_strategy[strategy] = entry
            continue
        corrs = {}
        for run_id in sorted(ids, key=lambda r: (runs[r].seed is None, runs[r].seed or 0)):
            meta = runs[run_id]
            partner = uniform_by_seed.get(meta.seed)
            if partner is None:
                if notes is not None:
                    notes.append(f"profiles{label}: {run_id} has no uniform run with seed {meta.seed}; "
                                    "left out of rank_shift_corr")
                continue
            ranks = meta.ranks
            if ranks is None or len(ranks) != len(shares[run_id]):
                if notes is not None:
                    notes.append(f"runs: {run_id} has no allocation for its {len(shares[run_id])} layers; "
                                    "left out of rank_shift_corr")
                continue
            shift = shares[run_id] - shares[partner]
            corrs[run_id] = st.pearson(ranks, shift)
            amp_parts.append((run_id, meta, np.asarray(ranks), shares[partner], shift))
        entry["rank_shift_corr"] = st.nan_mean(list(corrs.values())) if corrs else math.nan
        entry["rank_shift_corr_per_run"] = corrs
        per_strategy[strategy] = entry
    amp_runs = {run_id: meta for run_id, meta, *_ in amp_parts}
    amp_df = pd.DataFrame() if not tables else _long_table(amp_runs, {"rank": {r: ranks for r, _, ranks, _, _ in amp_parts},
                                    "uniform_share": {r: base for r, _, _, base, _ in amp_parts},
                                    "share": {r: shares[r] for r in amp_runs},
                                    "shift": {r: shift for r, _, _, _, shift in amp_parts}})

    if REFERENCE in mean_share:
        landscape = landscape_of(mean_share[REFERENCE])
        landscape["n_runs"] = len(by_strategy[REFERENCE])
        landscape["per_seed"] = {str(runs[r].seed): {"max_min_ratio": st.max_min_ratio(shares[r]),
                                                     "top30_share": st.top_share(shares[r], 0.3)}
                                 for r in by_strategy[REFERENCE] if runs[r].seed is not None}
        for key in ("max_min_ratio", "top30_share"):
            landscape[f"{key}_seed_range"] = _range(v[key] for v in landscape["per_seed"].values())
    else:
        landscape = landscape_of(np.array([]))
        landscape["n_runs"] = 0
    return {"landscape": landscape, "strategies": per_strategy}, shares_df, amp_df


def _range(values) -> list[float]:
    """[min, max] of the finite values ([] if none): the spread of a statistic over seeds."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return [float(min(finite)), float(max(finite))] if finite else []


def temporal_stability(half_sum: np.ndarray, half_count: np.ndarray) -> list[float]:
    """Per run: Pearson r across layers between S(l) of the first and of the second half of its steps."""
    first = layer_importance(half_sum[:, 0], half_count[:, 0])
    second = layer_importance(half_sum[:, 1], half_count[:, 1])
    return [st.pearson(a, b) for a, b in zip(first, second, strict=True)]


def module_shares(sum_lm: np.ndarray, modules: list[str]) -> list[dict[str, float]]:
    """Per run: each module's sum of grad_norm over steps and layers / the run's total."""
    totals = sum_lm.sum(axis=1)  # (R, M)
    out = []
    for row in totals:
        total = row.sum()
        out.append({m: float(v / total) if total > 0 else math.nan for m, v in zip(modules, row, strict=True)})
    return out


def per_parameter_importance(sum_lm: np.ndarray, count_lm: np.ndarray, run_ids: list[str], modules: list[str],
                             runs: dict[str, RunMeta], wanted: list[int]) -> tuple[dict[str, np.ndarray], list[str]]:
    """S(l) with every norm divided by sqrt(LoRA parameters of its module): the parameter-count control.

    The divisor is constant within a (run, layer, module), so it divides the sum of norms. Returns the
    importance of the runs (rows ``wanted`` of the arrays) whose run.json has ``lora_params`` for every
    module and layer, and the run ids of the rest.
    """
    out, lacking = {}, []
    n_layers = sum_lm.shape[1]
    for r in wanted:
        run_id = run_ids[r]
        params = runs[run_id].lora_params
        if not params or any(len(params.get(m, ())) != n_layers for m in modules):
            lacking.append(run_id)
            continue
        p = np.array([params[m] for m in modules], dtype=float).T  # (L, M)
        with np.errstate(divide="ignore", invalid="ignore"):
            normed = np.where(p > 0, sum_lm[r] / np.sqrt(p), 0.0)
        out[run_id] = layer_importance(normed[None], count_lm[r][None])[0]
    return out, lacking


def step_share_matrix(step_layer_sum: np.ndarray, step_present: np.ndarray, steps: np.ndarray,
                      max_columns: int = 200) -> pd.DataFrame:
    """Layer x step heatmap: each step's layer shares, averaged over the given runs, binned to columns.

    Rows are layers, columns the first step of each bin (at most ``max_columns``, so the HTML stays small).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = step_layer_sum / step_layer_sum.sum(axis=2, keepdims=True)  # (R, S, L)
    per_step[~step_present] = np.nan
    with warnings.catch_warnings():
        # Steps no run has are all-NaN columns: numpy warns 'mean of empty slice'; they are dropped below.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(per_step, axis=0)  # (S, L)
    keep = np.isfinite(mean).all(axis=1)
    mean, kept_steps = mean[keep], steps[keep]
    if kept_steps.size == 0:
        return pd.DataFrame()
    bins = np.array_split(np.arange(kept_steps.size), min(max_columns, kept_steps.size))
    matrix = np.stack([mean[b].mean(axis=0) for b in bins], axis=1)  # (L, bins)
    return pd.DataFrame(matrix, index=pd.RangeIndex(matrix.shape[0], name="layer"),
                        columns=pd.Index([int(kept_steps[b[0]]) for b in bins], name="step"))

