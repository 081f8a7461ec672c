"""Does accuracy move with the uniform rank at all? The question that frames every allocation result.

A study whose axes include ``lora.rank`` (configs/laptop-ranks.yaml, configs/paper-ranks.yaml) is a rank sweep:
for each combination of its other axes' values (e.g. the scaling rule), the uniform runs' accuracies per seed at
each rank are compared with a one-way ANOVA over seeds (the run is the unit, as in :mod:`.verdicts`), and each
rank's mean gets a 95% t-interval over its seeds. If accuracy is flat in rank, reallocating rank between layers
has little to act on, and an allocation verdict should be read in that light; the findings say so first.

Simplified: the test asks whether any rank differs from the others, not for a trend; with few seeds "flat" means
"no difference detectable at these seeds", which the sentence says.
"""

from __future__ import annotations

import math

from scipy import stats as sps

from dashboards.analysis.beyond import mean_interval
from dashboards.analysis.schema import CellSummary, RankSweep
from orchestrator.core.roles import REFERENCE

RANK_AXIS = "lora.rank"
ALPHA = 0.05


def rank_sweeps(cells: list[tuple[dict, CellSummary]], strategy: str = REFERENCE) -> list[RankSweep]:
    """One :class:`RankSweep` per combination of the other axes' values, from each cell's per-seed accuracies.

    >>> from dashboards.analysis.schema import StrategyResult
    >>> def cell(rank, accs):
    ...     return {"lora.rank": rank}, CellSummary(strategies={"uniform": StrategyResult(
    ...         accuracy_per_seed={str(s): a for s, a in enumerate(accs)})})
    >>> [sweep] = rank_sweeps([cell(1, [0.30, 0.32]), cell(8, [0.50, 0.52]), cell(16, [0.51, 0.49])])
    >>> sweep.ranks, [round(m, 2) for m in sweep.mean], sweep.flat
    ([1, 8, 16], [0.31, 0.51, 0.5], False)
    """
    groups: dict[tuple, dict[int, list[float]]] = {}
    for axes, summary in cells:
        if RANK_AXIS not in axes or strategy not in summary.strategies:
            continue
        others = tuple((k, v) for k, v in axes.items() if k != RANK_AXIS)
        by_seed = summary.strategies[strategy].accuracy_per_seed or {}
        values = [float(v) for v in by_seed.values() if v is not None and math.isfinite(v)]
        groups.setdefault(others, {})[int(axes[RANK_AXIS])] = values
    sweeps = []
    for others, by_rank in groups.items():
        ranks = sorted(by_rank)
        if len(ranks) < 2:
            continue
        intervals = [mean_interval(by_rank[r]) for r in ranks]
        samples = [by_rank[r] for r in ranks if by_rank[r]]
        testable = len(samples) >= 2 and sum(len(s) for s in samples) > len(samples)
        f_stat = p_value = math.nan
        if testable:
            f_stat, p_value = (float(x) for x in sps.f_oneway(*samples))
        sweeps.append(RankSweep(
            strategy=strategy, other_axes=dict(others), ranks=ranks, mean=[i.mean for i in intervals],
            ci_low=[i.ci_low for i in intervals], ci_high=[i.ci_high for i in intervals],
            n_seeds=[i.n for i in intervals], f_statistic=f_stat, p_value=p_value,
            df_between=len(samples) - 1 if testable else None,
            df_within=sum(len(s) for s in samples) - len(samples) if testable else None,
            flat=(p_value >= ALPHA) if testable and math.isfinite(p_value) else None))
    return sweeps


def rank_sweep_findings(sweeps: list[RankSweep]) -> list[str]:
    """Each sweep in one sentence: the accuracy at each rank with its interval, the test and its answer."""
    lines = []
    for sweep in sweeps:
        where = ", ".join(f"{k}={v}" for k, v in sweep.other_axes.items())
        levels = "; ".join(f"rank {r}: {_pct(m)} [{_pct(lo)}, {_pct(hi)}] (n={n})" for r, m, lo, hi, n in
                           zip(sweep.ranks, sweep.mean, sweep.ci_low, sweep.ci_high, sweep.n_seeds, strict=True))
        head = f"Rank sweep{' (' + where + ')' if where else ''}: {sweep.strategy} accuracy by {RANK_AXIS}, " \
               f"mean over seeds with 95% t-interval: {levels}."
        if sweep.flat is None:
            lines.append(f"{head} Not testable: a rank needs two seeds or more.")
        elif sweep.flat:
            lines.append(f"{head} Flat in rank: one-way ANOVA over seeds F({sweep.df_between}, {sweep.df_within}) = "
                         f"{sweep.f_statistic:.2f}, p = {sweep.p_value:.3f} (no rank differs detectably at these "
                         "seeds), so an allocation of rank between layers has little to act on here.")
        else:
            lines.append(f"{head} Accuracy moves with rank: one-way ANOVA over seeds F({sweep.df_between}, "
                         f"{sweep.df_within}) = {sweep.f_statistic:.2f}, p = {sweep.p_value:.3f}.")
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"
