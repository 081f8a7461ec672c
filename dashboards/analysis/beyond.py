"""Beyond the paper: re-profiling rounds, the per-reward gradient decomposition, and where the update goes.

Pure functions of one cell's tables, each returning (summary part, figure table); None when the study did not
measure it (no round beyond the first, no decomposed step, no geometry table).

- :func:`rounds_summary`: per round k (0: where the first allocation's profile came from, e.g. the uniform or the
  SFT run; k: the strategy of ``allocation_round`` k, strategies/rounds.py), the max/min ratio of the round's own
  profile per seed and its allocation: does re-allocating from the new profile keep steepening it (the feedback
  loop)?
- :func:`decomposition_summary`: each layer's share of each component's gradient, S_c(l) / sum S_c with
  S_c(l) = sum over modules of the mean over decomposed steps of the component's norm (Eq. 2 per component),
  and the paper's hypothesis as a statistic: in the coldest 30% of layers by the total S(l) (floor(0.3 L),
  at least 1), the format gradient's share minus the correctness gradient's share, per run, with a 95%
  t-interval over the strategy's seeds. Positive: the cold layers carry relatively more of the format signal.
- :func:`geometry_summary`: at each run's last measured step, each layer's update share (sum over modules of
  ||dW||_F, as a share) against its gradient share S(l) (Pearson r per run) and its allocated rank (Spearman
  r per run, where ranks differ), and the mean effective rank (as a fraction of the rank) and
  principal-subspace overlap of the updates.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from dashboards.analysis import stats as st
from dashboards.analysis.profiles import RunMeta
from dashboards.analysis.schema import (
    AdaLoraSeed,
    AdaLoraSummary,
    ControlStrategy,
    Decomposition,
    DecompositionStrategy,
    Geometry,
    GeometryRun,
    GeometryStrategy,
    MeanInterval,
    Round,
    Rounds,
    SeedDifferences,
    StrategyResult,
)
from dashboards.style import order_strategies
from orchestrator.core.contract import parse_run_id
from orchestrator.core.roles import REFERENCE
from orchestrator.core.strategies import get_strategy, registered_names

COLD_FRACTION = 0.3  # the cold layers: the bottom 30% by S(l), as the landscape's top30 uses the top 30%
HYPOTHESIS = ("format", "correctness")  # the paper: cold layers carry formatting (and numerical precision)
COMPARED_WITH = "proportional"  # AdaLoRA's final ranks are compared with this strategy's allocation


def mean_interval(values: list[float]) -> MeanInterval:
    """Mean with a 95% t-interval over ``values`` (runs, one per seed); the interval is NaN for one value.

    >>> r = mean_interval([0.1, 0.2, 0.3])
    >>> round(r.mean, 3), round(r.ci_low, 3), round(r.ci_high, 3), r.n
    (0.2, -0.048, 0.448, 3)
    """
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return MeanInterval(mean=math.nan, ci_low=math.nan, ci_high=math.nan, n=0)
    mean = float(np.mean(values))
    if n < 2:
        return MeanInterval(mean=mean, ci_low=math.nan, ci_high=math.nan, n=1)
    half = float(sps.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return MeanInterval(mean=mean, ci_low=mean - half, ci_high=mean + half, n=n)


def cold_layers(importance: np.ndarray) -> list[int]:
    """The bottom floor(0.3 L) layers (at least one) by S(l), coldest first.

    >>> cold_layers(np.array([5.0, 1.0, 3.0, 0.5, 4.0, 2.0, 6.0, 7.0, 8.0, 9.0]))
    [3, 1, 5]
    """
    count = max(1, int(math.floor(COLD_FRACTION * len(importance))))
    return [int(i) for i in np.argsort(importance, kind="stable")[:count]]


def _by_seed(ids: list[str], runs: dict[str, RunMeta]) -> list[str]:
    return sorted(ids, key=lambda r: (runs[r].seed is None, runs[r].seed or 0, r))


def round_zero_source(first_round: str | None, runs: dict[str, RunMeta]) -> str:
    """What round 0 really is: the strategy whose runs the first round's allocations were profiled from
    (``allocation.profile_from``: the uniform run, the SFT warm start, ...), or the profile file they read.

    >>> runs = {"proportional-seed0": RunMeta("proportional-seed0", "proportional", 0, profile_source="sft-seed0")}
    >>> round_zero_source("proportional", runs)
    'sft'
    >>> runs["proportional-seed0"].profile_source = "/data/base.parquet"
    >>> round_zero_source("proportional", runs)
    'profile /data/base.parquet'
    """
    sources = {runs[r].profile_source for r in runs if runs[r].strategy == first_round and runs[r].profile_source}
    if len(sources) != 1:
        return REFERENCE  # no record of it (older run.json) or several: the default source
    source = sources.pop()
    strategy, seed, _ = parse_run_id(source)
    return strategy if seed is not None else f"profile {source}"


def rounds_summary(strategy_entries: dict[str, StrategyResult], runs: dict[str, RunMeta],
                   weight_gradient: dict[str, ControlStrategy] | None = None) -> Rounds | None:
    """Max/min ratio and allocation per re-profiling round (and the max/min on the frozen weights' gradient, from
    ``weight_gradient``, where measured); None unless the cell has a round beyond the first."""
    chain = {0: REFERENCE}
    for name in registered_names():
        k = get_strategy(name).allocation_round
        if k is not None and name in strategy_entries:
            chain[k] = name
    if max(chain) < 2:
        return None
    chain[0] = round_zero_source(chain.get(1), runs)
    rounds = []
    for k in sorted(chain):
        name = chain[k]
        entry = strategy_entries.get(name) or StrategyResult(max_min_ratio=math.nan)
        ids = _by_seed([r for r, m in runs.items() if m.strategy == name], runs)
        allocations = {str(runs[r].seed): [int(v) for v in runs[r].ranks] for r in ids if runs[r].ranks is not None}
        rank_ratio = [max(a) / min(a) for a in allocations.values() if a and min(a) > 0]
        rounds.append(Round(round=k, strategy=name, max_min_ratio=entry.max_min_ratio,
                            max_min_ratio_per_seed=dict(entry.max_min_ratio_per_seed), allocation_per_seed=allocations,
                            allocation_max_min=st.nan_mean(rank_ratio) if rank_ratio else math.nan,
                            accuracy=entry.item_accuracy,
                            weight_gradient_max_min=(weight_gradient or {}).get(name, ControlStrategy()).max_min_ratio))
    return Rounds(rounds)


def component_importance(rows: pd.DataFrame, num_layers: int) -> dict[str, np.ndarray]:
    """Per component, S_c(l) = sum over modules of the mean over decomposed steps of the norm (one run's rows)."""
    out = {}
    for component, part in rows.groupby("component", sort=False):
        finite = part[np.isfinite(part["grad_norm"])]
        means = finite.groupby(["layer", "module"])["grad_norm"].mean().groupby(level="layer").sum()
        values = np.zeros(num_layers)
        values[means.index.to_numpy(dtype=int)] = means.to_numpy()
        out[str(component)] = values
    return out


def decomposition_summary(components: pd.DataFrame | None, importance: dict[str, np.ndarray],
                          runs: dict[str, RunMeta]) -> tuple[Decomposition | None, pd.DataFrame]:
    """Layer shares per component and the cold-layer hypothesis test, per strategy; see the module docstring."""
    if components is None or components.empty:
        return None, pd.DataFrame()
    rows, per_run = [], {}
    for run_id, part in components.groupby("run_id", sort=False):
        run_id = str(run_id)
        if run_id not in runs or run_id not in importance:
            continue
        total = importance[run_id]
        shares = {c: st.shares(v) for c, v in component_importance(part, len(total)).items()}
        cold = cold_layers(total)
        per_run[run_id] = {"cold_layers": cold, "steps": int(part["step"].nunique()),
                           "cold_share": {c: float(np.sum(s[cold])) for c, s in shares.items()}}
        for c, s in shares.items():
            rows += [(runs[run_id].strategy, run_id, runs[run_id].seed, c, layer, float(v))
                     for layer, v in enumerate(s)]
    if not per_run:
        return None, pd.DataFrame()
    frame = pd.DataFrame(rows, columns=["strategy", "run_id", "seed", "component", "layer", "share"])
    summary = {}
    for strategy in order_strategies({runs[r].strategy for r in per_run}):
        ids = _by_seed([r for r in per_run if runs[r].strategy == strategy], runs)
        components_seen = sorted({c for r in ids for c in per_run[r]["cold_share"]})
        cold_share = {c: st.nan_mean([per_run[r]["cold_share"].get(c, math.nan) for r in ids]) for c in components_seen}
        part = frame[frame["run_id"].isin(ids)]
        layer_share = {c: part[part["component"] == c].groupby("layer")["share"].mean().tolist()
                       for c in components_seen}
        entry = DecompositionStrategy(components=components_seen, n_runs=len(ids), cold_share=cold_share,
                                      layer_share=layer_share, decomposed_steps=[per_run[r]["steps"] for r in ids],
                                      cold_layers_per_seed={str(runs[r].seed): per_run[r]["cold_layers"] for r in ids})
        fmt, corr = HYPOTHESIS
        if fmt in components_seen and corr in components_seen:
            diffs = {str(runs[r].seed): per_run[r]["cold_share"][fmt] - per_run[r]["cold_share"][corr] for r in ids}
            entry.format_minus_correctness = SeedDifferences(**vars(mean_interval(list(diffs.values()))),
                                                             per_seed=diffs)
        summary[strategy] = entry
    return Decomposition(strategies=summary, cold_fraction=COLD_FRACTION), frame


def geometry_summary(geometry: pd.DataFrame | None, importance: dict[str, np.ndarray],
                     runs: dict[str, RunMeta]) -> tuple[Geometry | None, pd.DataFrame]:
    """Update share against gradient share and rank, effective rank and overlap, per strategy."""
    if geometry is None or geometry.empty:
        return None, pd.DataFrame()
    rows, per_run = [], {}
    for run_id, part in geometry.groupby("run_id", sort=False):
        run_id = str(run_id)
        if run_id not in runs:
            continue
        last = part[part["step"] == part["step"].max()]
        norms = last.groupby("layer")["update_norm"].sum().sort_index()
        update_share = st.shares(norms.to_numpy(dtype=float))
        ranks = last.groupby("layer")["rank"].mean().sort_index().to_numpy(dtype=float)
        grad_share = st.shares(importance[run_id]) if run_id in importance else np.full(len(norms), np.nan)
        valid = last[np.isfinite(last["effective_rank"])]
        per_run[run_id] = GeometryRun(
            step=int(last["step"].iloc[0]),
            update_vs_gradient_r=st.pearson(update_share, grad_share) if len(grad_share) == len(norms) else math.nan,
            update_vs_rank_rho=float(sps.spearmanr(update_share, ranks).statistic) if np.ptp(ranks) > 0 else math.nan,
            effective_rank_fraction=float((valid["effective_rank"] / valid["rank"]).mean()) if len(valid) else math.nan,
            principal_overlap=float(valid["principal_overlap"].mean()) if len(valid) else math.nan,
        )
        rows += [(runs[run_id].strategy, run_id, runs[run_id].seed, int(layer), float(u), float(g), float(r))
                 for layer, u, g, r in zip(norms.index, update_share, grad_share, ranks, strict=True)]
    if not per_run:
        return None, pd.DataFrame()
    frame = pd.DataFrame(rows, columns=["strategy", "run_id", "seed", "layer", "update_share", "grad_share", "rank"])
    summary = {}
    for strategy in order_strategies({runs[r].strategy for r in per_run}):
        ids = _by_seed([r for r in per_run if runs[r].strategy == strategy], runs)
        means = {key: st.nan_mean([getattr(per_run[r], key) for r in ids])
                 for key in ("update_vs_gradient_r", "update_vs_rank_rho", "effective_rank_fraction",
                             "principal_overlap")}
        summary[strategy] = GeometryStrategy(**means, n_runs=len(ids),
                                             per_seed={str(runs[r].seed): per_run[r] for r in ids})
    return Geometry(strategies=summary), frame


def adalora_summary(rank_steps: pd.DataFrame | None, runs: dict[str, RunMeta],
                    strategy: str = "adalora") -> tuple[AdaLoraSummary | None, pd.DataFrame]:
    """AdaLoRA's ranks over training: each layer's total rank per step, the final pattern against the
    :data:`COMPARED_WITH` allocation of the same seed (Spearman r), and its stability across seeds (mean pairwise
    Spearman r of the final patterns)."""
    if rank_steps is None or rank_steps.empty:
        return None, pd.DataFrame()
    ids = _by_seed([r for r in rank_steps["run_id"].unique() if r in runs and runs[r].strategy == strategy], runs)
    if not ids:
        return None, pd.DataFrame()
    final, per_seed = {}, {}
    partner = {runs[r].seed: r for r, m in runs.items() if m.strategy == COMPARED_WITH and m.ranks is not None}
    for run_id in ids:
        part = rank_steps[rank_steps["run_id"] == run_id]
        last = part[part["step"] == part["step"].max()].sort_values("layer")
        pattern = last["rank"].to_numpy(dtype=float)
        final[run_id] = pattern
        other = partner.get(runs[run_id].seed)
        rho = (float(sps.spearmanr(pattern, runs[other].ranks).statistic)
               if other is not None and len(runs[other].ranks) == len(pattern) and np.ptp(pattern) > 0
               and np.ptp(runs[other].ranks) > 0 else math.nan)
        first = part[part["step"] == part["step"].min()]["rank"].sum()
        per_seed[str(runs[run_id].seed)] = AdaLoraSeed(final_layer_ranks=[int(v) for v in pattern],
                                                       spearman_vs_proportional=rho, total_rank_first_step=int(first),
                                                       total_rank_last_step=int(pattern.sum()))
    pairs = [float(sps.spearmanr(final[a], final[b]).statistic) for i, a in enumerate(ids) for b in ids[i + 1:]
             if np.ptp(final[a]) > 0 and np.ptp(final[b]) > 0]
    summary = AdaLoraSummary(n_runs=len(ids), per_seed=per_seed, compared_with=COMPARED_WITH,
                             spearman_vs_proportional=st.nan_mean([v.spearman_vs_proportional
                                                                   for v in per_seed.values()]),
                             cross_seed_spearman=st.nan_mean(pairs) if pairs else math.nan)
    frame = rank_steps[rank_steps["run_id"].isin(ids)].assign(
        seed=lambda f: [runs[r].seed for r in f["run_id"]], strategy=strategy)
    return summary, frame
