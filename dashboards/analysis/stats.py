"""The statistics of the analysis, as small pure functions with the issue's exact definitions.

Each function takes plain numbers or numpy arrays and returns floats (NaN where a statistic is undefined,
e.g. a correlation over constant values), so the callers can put them straight into summary.json (NaN is
written as null there). The library routines do the statistics: scipy's ``binomtest`` for the Wilson
interval and the exact McNemar test, numpy's ``corrcoef`` for Pearson correlations.

Note on the paper's Table 1: its "Wilson" half-widths (6.0/6.4/6.5/6.6/6.6 points for 74.5/70.0/67.5/65.0/
66.0% of 200) are the normal-approximation (Wald) half-widths ``1.96 sqrt(p(1-p)/n)``; the Wilson score
interval gives 6.0/6.3/6.4/6.6/6.5. We report Wilson, as the issue defines, and the Wald half-width beside
it (``wald_half_width``) so the paper's numbers can be compared directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from orchestrator.core.projections import module_group

Z_95 = float(stats.norm.ppf(0.975))


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of ``correct / n`` (NaN, NaN when ``n == 0``).

    >>> lo, hi = wilson_interval(149, 200)
    >>> round(lo, 4), round(hi, 4), round((hi - lo) / 2 * 100, 1)
    (0.6804, 0.8004, 6.0)
    """
    if n <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def wald_half_width(correct: int, n: int) -> float:
    """Normal-approximation 95% half-width ``z sqrt(p(1-p)/n)``: what the paper's Table 1 prints.

    >>> round(wald_half_width(140, 200) * 100, 1)
    6.4
    """
    if n <= 0:
        return math.nan
    p = correct / n
    return Z_95 * math.sqrt(p * (1.0 - p) / n)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test of ``b`` of the ``b + c`` discordant pairs.

    ``b``: pairs only the first system got right; ``c``: pairs only the second got right. No discordant
    pair means no evidence of a difference (p = 1).

    >>> mcnemar_exact(0, 0)
    1.0
    >>> round(mcnemar_exact(2, 10), 4)  # 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * 79/4096
    0.0386
    """
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(b), int(b + c), 0.5, alternative="two-sided").pvalue)


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson r over the pairs where both are finite; NaN with fewer than 3 pairs or a constant side.

    >>> round(pearson([1, 2, 3, 4], [2, 4, 6, 8.5]), 6)  # 10.75 / sqrt(5 * 23.1875)
    0.998381
    >>> pearson([1, 1, 1], [1, 2, 3])
    nan
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    # scipy warns and returns NaN on constant input; checking first keeps the logs clean.
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    # numpy's corrcoef is the same statistic as scipy.stats.pearsonr without its per-call overhead
    # (the analysis computes a few hundred of them).
    return float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))


def shares(importance: np.ndarray) -> np.ndarray:
    """Each entry's share of the total along the last axis (Eq. 2's S(l) / sum S).

    >>> shares(np.array([1.0, 3.0])).tolist()
    [0.25, 0.75]
    """
    importance = np.asarray(importance, dtype=float)
    total = importance.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return importance / total


def max_min_ratio(share: np.ndarray) -> float:
    """Largest share over smallest share (NaN if any share is missing, inf if one is zero).

    >>> max_min_ratio(np.array([0.2, 0.3, 0.5]))
    2.5
    """
    share = np.asarray(share, dtype=float)
    if share.size == 0 or not np.all(np.isfinite(share)):
        return math.nan
    low = share.min()
    return math.inf if low <= 0 else float(share.max() / low)


def top_share(share: np.ndarray, fraction: float = 0.3) -> float:
    """Sum of the ``floor(fraction * L)`` largest shares (the paper's "top 30% of layers": 8 of 28).

    The paper's own numbers fix the rule: layers 9-18 (10 layers) carry 43.0%, so any 9 largest carry at least
    38.7% and its 35.7% is possible only with 8 layers, floor(0.3 x 28).

    >>> top_share(np.array([0.1, 0.2, 0.3, 0.4]))  # floor(1.2) = 1 layer: 0.4
    0.4
    >>> top_share(np.full(10, 0.1))  # floor(3.0) = 3 (0.3 * 10 is 3.0000000000000004 in floats)
    0.3
    """
    share = np.asarray(share, dtype=float)
    if share.size == 0 or not np.all(np.isfinite(share)):
        return math.nan
    k = max(1, math.floor(fraction * share.size + 1e-9))
    return float(np.round(np.sort(share)[::-1][:k].sum(), 12))


def band_bounds(num_layers: int) -> tuple[int, int]:
    """(b, L - b) with b = round(L/3): early = [0, b), middle = [b, L-b), late = [L-b, L).

    >>> band_bounds(28)  # 0-8 early, 9-18 middle, 19-27 late, as in the paper
    (9, 19)
    """
    b = round(num_layers / 3)
    return b, num_layers - b


def band_share(share: np.ndarray) -> dict[str, float]:
    """Shares of the early, middle and late thirds of the layers.

    >>> band_share(np.array([0.1, 0.2, 0.3, 0.15, 0.15, 0.1]))
    {'early': 0.3, 'middle': 0.45, 'late': 0.25}
    """
    share = np.asarray(share, dtype=float)
    b, late = band_bounds(share.size)
    return {"early": float(np.round(share[:b].sum(), 12)), "middle": float(np.round(share[b:late].sum(), 12)),
            "late": float(np.round(share[late:].sum(), 12))}


def group_shares(module_share: dict[str, float]) -> tuple[float, float]:
    """(attention share, MLP share): q,k,v,o and gate,up,down summed.

    >>> group_shares({"q_proj": 0.1, "k_proj": 0.1, "v_proj": 0.2, "o_proj": 0.1, "up_proj": 0.5})
    (0.5, 0.5)
    """
    attention = sum(v for m, v in module_share.items() if module_group(m) == "attention")
    mlp = sum(v for m, v in module_share.items() if module_group(m) == "mlp")
    return round(attention, 12), round(mlp, 12)


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none): averaging a statistic over seeds that may be undefined.

    >>> nan_mean([1.0, float("nan"), 3.0])
    2.0
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
