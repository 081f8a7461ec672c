"""Layer importance (Eq. 2), the landscape and the amplification statistics from aggregated profiles.

S(l) per run comes from :func:`orchestrator.core.importance.layer_importance` (Eq. 2, its one implementation). ``importance_stats``
computes, for one notion of importance (Eq. 2 itself, the per-parameter normalised control, or one module
alone), the landscape of the profiling strategy ``uniform`` and, per strategy, the seed-averaged
max/min ratio and the correlation between allocated rank and share shift against the uniform run of the
same seed. It returns the numbers and the long tables the figures are drawn from.

Simplified: every run of a cell must have the same number of layers (one model per cell).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dashboards.analysis import stats as st
from dashboards.analysis.schema import Bands, LayerLandscape, ProfileLandscape, SeedLandscape, shallow
from orchestrator.core.importance import layer_importance
from orchestrator.core.roles import REFERENCE, SFT


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
    lora_scaling: str | None = None  # run.json's LoRA scaling convention (orchestrator.core.lora_scaling)
    ranks_change: bool = False  # its ranks changed while training (run.json records an initial_allocation)
    profile_source: str | None = None  # where its allocation's profile came from: a run id, or a profile file


@dataclass
class StrategyProfile:
    """One strategy's statistics under one notion of importance (seed-averaged shares, and per seed)."""

    max_min_ratio: float
    layer_share: list[float]
    max_min_ratio_per_seed: dict[str, float]
    max_min_ratio_seed_range: list[float]
    rank_shift_corr: float | None = None  # None for the reference strategy and SFT
    rank_shift_corr_per_run: dict[str, float] = field(default_factory=dict)


@dataclass
class ImportanceStats:
    """What :func:`importance_stats` finds: the reference landscape, each strategy's numbers, the figure tables."""

    landscape: ProfileLandscape
    strategies: dict[str, StrategyProfile]
    shares: pd.DataFrame  # one row per (run, layer): its share
    amplification: pd.DataFrame  # one row per (run, layer) with a uniform partner: rank, shares, shift


@dataclass
class _Amplified:
    """One run's amplification: its allocated ranks and the shift of its shares against its uniform partner."""

    run_id: str
    ranks: np.ndarray
    uniform_share: np.ndarray
    shift: np.ndarray


def _shares_ok(share: np.ndarray) -> bool:
    return bool(share.size) and bool(np.all(np.isfinite(share)))


def landscape_of(share: np.ndarray) -> LayerLandscape:
    """max/min, top-30% share and the layer shares of one (seed-averaged) share vector."""
    if not _shares_ok(share):
        return LayerLandscape(max_min_ratio=math.nan, top30_share=math.nan, layer_share=[])
    return LayerLandscape(max_min_ratio=st.max_min_ratio(share), top30_share=st.top_share(share, 0.3),
                          layer_share=[float(x) for x in share])


def band_share_of(share: np.ndarray) -> Bands:
    """The early, middle and late thirds' shares (all NaN when the shares are unusable)."""
    return Bands(**st.band_share(share)) if _shares_ok(share) else Bands(math.nan, math.nan, math.nan)


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
                     tables: bool = True) -> ImportanceStats:
    """Landscape (uniform) and per-strategy amplification for one importance measure.

    ``importance``: S(l) per run id. ``notes``: where to report a run lacking its uniform partner or a
    usable allocation (None: stay quiet, for the controls that repeat the main analysis). The tables are
    empty unless ``tables``.
    """
    shares = _usable_shares(importance, notes)
    by_strategy: dict[str, list[str]] = {}
    for run_id in shares:
        by_strategy.setdefault(runs[run_id].strategy, []).append(run_id)
    mean_share = {s: np.mean([shares[r] for r in ids], axis=0) for s, ids in by_strategy.items()}
    uniform_by_seed = {runs[r].seed: r for r in by_strategy.get(REFERENCE, [])}
    amplified: list[_Amplified] = []
    per_strategy = {}
    for strategy, ids in by_strategy.items():
        # Averaging shares over seeds flattens the landscape; each seed's own ratio is reported beside it.
        per_seed = {str(runs[r].seed): st.max_min_ratio(shares[r]) for r in ids if runs[r].seed is not None}
        entry = StrategyProfile(max_min_ratio=st.max_min_ratio(mean_share[strategy]),
                                layer_share=[float(x) for x in mean_share[strategy]], max_min_ratio_per_seed=per_seed,
                                max_min_ratio_seed_range=_range(per_seed.values()))
        if strategy not in (REFERENCE, SFT):
            found = _amplification(ids, shares, runs, uniform_by_seed, notes)
            corrs = {a.run_id: st.pearson(a.ranks, a.shift) for a in found}
            entry.rank_shift_corr = st.nan_mean(list(corrs.values())) if corrs else math.nan
            entry.rank_shift_corr_per_run = corrs
            amplified += found
        per_strategy[strategy] = entry
    landscape = _reference_landscape(by_strategy.get(REFERENCE, []), shares, runs)
    shares_df = _long_table({r: runs[r] for r in shares}, {"share": shares}) if tables else pd.DataFrame()
    amp_df = _amplification_table(amplified, shares, runs) if tables else pd.DataFrame()
    return ImportanceStats(landscape, per_strategy, shares_df, amp_df)


def _usable_shares(importance: dict[str, np.ndarray], notes: list[str] | None) -> dict[str, np.ndarray]:
    """Each run's layer shares, leaving out (and noting) a run whose shares are undefined."""
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
    return shares


def _amplification(ids: list[str], shares: dict[str, np.ndarray], runs: dict[str, RunMeta],
                   uniform_by_seed: dict, notes: list[str] | None) -> list[_Amplified]:
    """Each run's share shift against the uniform run of its seed, with its allocated ranks (seed order)."""
    found = []
    for run_id in sorted(ids, key=lambda r: (runs[r].seed is None, runs[r].seed or 0)):
        meta = runs[run_id]
        partner = uniform_by_seed.get(meta.seed)
        if partner is None:
            if notes is not None:
                notes.append(f"profiles: {run_id} has no uniform run with seed {meta.seed}; left out of "
                             "rank_shift_corr")
            continue
        if meta.ranks is None or len(meta.ranks) != len(shares[run_id]):
            if notes is not None:
                notes.append(f"runs: {run_id} has no allocation for its {len(shares[run_id])} layers; "
                             "left out of rank_shift_corr")
            continue
        found.append(_Amplified(run_id, np.asarray(meta.ranks), shares[partner], shares[run_id] - shares[partner]))
    return found


def _amplification_table(amplified: list[_Amplified], shares: dict[str, np.ndarray],
                         runs: dict[str, RunMeta]) -> pd.DataFrame:
    amp_runs = {a.run_id: runs[a.run_id] for a in amplified}
    return _long_table(amp_runs, {"rank": {a.run_id: a.ranks for a in amplified},
                                  "uniform_share": {a.run_id: a.uniform_share for a in amplified},
                                  "share": {r: shares[r] for r in amp_runs},
                                  "shift": {a.run_id: a.shift for a in amplified}})


def _reference_landscape(reference: list[str], shares: dict[str, np.ndarray],
                         runs: dict[str, RunMeta]) -> ProfileLandscape:
    """The uniform runs' landscape: seed-averaged shares, and each seed's max/min and top-30% share."""
    if not reference:
        return ProfileLandscape(**shallow(landscape_of(np.array([]))), band_share=band_share_of(
            np.array([])), n_runs=0)
    mean = np.mean([shares[r] for r in reference], axis=0)
    per_seed = {str(runs[r].seed): SeedLandscape(max_min_ratio=st.max_min_ratio(shares[r]),
                                                 top30_share=st.top_share(shares[r], 0.3))
                for r in reference if runs[r].seed is not None}
    return ProfileLandscape(**shallow(landscape_of(mean)), band_share=band_share_of(mean),
                            n_runs=len(reference), per_seed=per_seed,
                            max_min_ratio_seed_range=_range(v.max_min_ratio for v in per_seed.values()),
                            top30_share_seed_range=_range(v.top30_share for v in per_seed.values()))


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

