"""Per-layer LoRA rank allocation: pure functions, budget-exact by construction.

The paper's Eq. 3 allocates ``r(l) = clip(round(S(l)/sum S * R_total), r_min, r_max)`` in multiples of 4.
Rounding and clipping each break "same budget" on their own, so here the continuous allocation is first
water-filled (a scale factor chosen so that the clipped values sum exactly to the budget), then floored to
multiples, and the remaining units go to the layers with the largest fractional part (ties to the lower
layer index). The result is always within bounds, always multiples, sums exactly to the budget, and is
monotone in importance.

The strategies themselves (which budget, which weights) live in :mod:`orchestrator.core.strategies`, one module
each; ``orchestrator.core.strategies.allocate`` is the keyword-argument entry point to any of them.

>>> distribute([1, 1, 1, 9], budget=128, low=4, high=64, multiple=4)
[24, 20, 20, 64]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from orchestrator.core.errors import StudyError


def reduced_budget(num_layers: int, rank: int, fraction: float, multiple: int) -> int:
    """The `reduced` strategy's total rank: ``fraction`` of the uniform budget, rounded to ``multiple``.

    >>> reduced_budget(28, 32, 0.7, 4)
    628
    """
    return int(round(num_layers * rank * fraction / multiple)) * multiple


def distribute(weights: Sequence[float], budget: int, low: int, high: int, multiple: int) -> list[int]:
    """Split ``budget`` over layers in proportion to ``weights``, within [low, high], in multiples.

    >>> distribute([1, 2, 3], budget=24, low=4, high=12, multiple=4)
    [4, 8, 12]
    >>> distribute([0, 0, 1], budget=24, low=4, high=12, multiple=4)  # ties go to the lower layer index
    [8, 4, 12]
    """
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    if n == 0:
        raise StudyError("allocation: no layers to allocate over")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        bad = [i for i, x in enumerate(w) if not (math.isfinite(x) and x >= 0)]
        raise StudyError(f"allocation: importance must be finite and >= 0; layer(s) {bad[:5]} are {w[bad[:5]].tolist()}")
    if w.sum() == 0:
        raise StudyError("allocation: every layer has zero importance; the profile carries no gradient signal")
    if budget % multiple:
        raise StudyError(f"allocation: budget {budget} is not a multiple of {multiple}")
    if not n * low <= budget <= n * high:
        raise StudyError(
            f"allocation: budget {budget} is infeasible for {n} layers within [{low}, {high}] "
            f"(possible totals: {n * low}..{n * high})"
        )
    ideal = _water_fill(w, budget, low, high)
    units = ideal / multiple
    floors = np.floor(units + 1e-9).astype(np.int64)
    remainder = budget // multiple - int(floors.sum())
    frac = units - floors
    # Largest fractional part first; ties by higher importance (keeps the result monotone), then by layer
    # index (np.lexsort sorts by the last key first).
    order = np.lexsort((np.arange(n), -w, -np.round(frac, 12)))
    ranks = floors.copy()
    for i in order:
        if remainder <= 0:
            break
        if (ranks[i] + 1) * multiple <= high:
            ranks[i] += 1
            remainder -= 1
    result = [int(r) * multiple for r in ranks]
    # Invariants the paper's comparison rests on; a failure here is a bug, not bad input.
    assert sum(result) == budget and all(low <= r <= high and r % multiple == 0 for r in result), result
    return result


def _water_fill(w: np.ndarray, budget: int, low: int, high: int) -> np.ndarray:
    """Continuous ranks clip(lam * w, low, high) with lam chosen so they sum to ``budget``.

    Zero-weight layers sit at ``low`` unless the weighted layers are all at ``high`` and budget is left,
    in which case the zero-weight layers share the rest equally.
    """
    w = w / w.max()  # scale-free: lam then stays in a sane float range whatever the units of S(l)
    # A layer below 1e-9 of the hottest is treated as zero-weight: its continuous share would be far below one
    # rank unit anyway, and it keeps lam finite. Its true weight still breaks rounding ties (see distribute).
    pos = w > 1e-9
    n_pos, n_zero = int(pos.sum()), int((~pos).sum())
    saturated = n_pos * high + n_zero * low
    if saturated <= budget:
        return np.where(pos, float(high), low + (budget - saturated) / max(n_zero, 1))

    def total(lam: float) -> float:
        return float(np.where(pos, np.clip(lam * w, low, high), low).sum())

    lo_lam, hi_lam = 0.0, 1.0
    while total(hi_lam) < budget:
        hi_lam *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo_lam + hi_lam)
        if total(mid) < budget:
            lo_lam = mid
        else:
            hi_lam = mid
    x = np.where(pos, np.clip(hi_lam * w, low, high), float(low))
    # Bisection leaves a float error far below one rank unit; spread it over layers not at a bound.
    free = (x > low) & (x < high)
    if free.any():
        x[free] += (budget - x.sum()) / free.sum()
    return x
