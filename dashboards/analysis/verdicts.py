"""Verdicts that hold: does a strategy differ from uniform, or from the base model, beyond run-to-run variation?

Every seed and strategy answers the same test items, and a trained run is one draw of the training
randomness (data order, LoRA init, rollouts). The item-level tests of :mod:`dashboards.analysis.items` treat
the runs as fixed: they ask whether *these* runs answered *these* items differently, and a strategy whose two
runs happened to land low is "significant" there although another two seeds would not be. So the verdict is
made with the run as the experimental unit:

- each run's accuracy on the items every run of the cell answered;
- the run-to-run variance of that accuracy, pooled over every strategy with at least two seeds (they share the
  model, the items and the settings; one strategy's two seeds alone give one degree of freedom);
- a strategy against uniform: the difference of their mean run accuracies, with standard error
  ``s sqrt(1/n_X + 1/n_U)`` and Student's t on the pooled degrees of freedom (a two-sample t-test with pooled
  variance, i.e. the contrast of a one-way ANOVA over runs);
- a strategy against the base model: the base is one greedy evaluation of a fixed model (seed-free, the same
  answers whatever the seed), so its accuracy is a constant: standard error ``s / sqrt(n_X)``;
- why not a paired test per seed: runs of two strategies with the same seed share the seed but not the rank
  layout, so their pairing is weak, and a paired test with two seeds has one degree of freedom; why not a
  two-stage bootstrap over seeds then items: with two or three seeds a bootstrap over seeds has three or ten
  distinct resamples and no honest interval. Items need no resampling here: they are common to both sides of a
  comparison, so with no strategy effect their sampling cancels, and each run's item-level noise is part of its
  accuracy, hence of the run variance. ``tests/test_verdicts.py`` checks the calibration on synthetic studies
  with a random effect per run and items of varied difficulty;
- the family of verdicts a cell states (each strategy against uniform and against base; uniform against base
  and base against uniform are one comparison) is corrected with Holm's step-down method, and a verdict is
  significant when its adjusted p is below 0.05;
- a comparison with fewer than two seeds on a trained side, or with no pooled degrees of freedom, is not
  tested: its verdict says so, and no p-value from items alone stands in for it.

:func:`detectability` turns the same variance into what the study can detect: the smallest difference from
uniform found with 80% power at the strictest Holm threshold, and the seeds the paper's 4.5-point gap needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import integrate, optimize
from scipy import stats as sps

from dashboards.analysis.schema import Detectability
from orchestrator.core.roles import BASE, REFERENCE
from orchestrator.core.strategies import get_strategy, is_strategy

ALPHA = 0.05
POWER = 0.8
PAPER_GAP = 0.045  # uniform 74.5% vs proportional 70.0% (the paper's Table 1)
TEST = "t over seeds, pooled run variance, Holm-adjusted"


@dataclass
class SeedVerdict:
    """One comparison's verdict: the difference, its interval over seeds, its p-values, whether it holds."""

    delta: float
    ci_low: float
    ci_high: float
    p_unadjusted: float
    p_value: float  # Holm-adjusted over the cell's family; what the verdict uses
    significant: bool
    test: str
    n_seeds: int  # seeds of the strategy (its reference's when the strategy is the fixed base)
    df: int | None


def fixed(strategy: str) -> bool:
    """A strategy evaluated once, whatever the seed (the base model): its accuracy is a constant, not a sample."""
    return strategy == BASE or (is_strategy(strategy) and not get_strategy(strategy).per_seed)


def run_accuracies(df: pd.DataFrame) -> dict[str, dict[int, float]]:
    """Per strategy and seed: the run's accuracy on the items every run of ``df`` answered.

    ``df``: strategy, seed, item, correct (one row per run and item).
    """
    runs = df.groupby(["strategy", "seed"])["item"].apply(frozenset)
    shared = frozenset.intersection(*runs) if len(runs) else frozenset()
    rows = df[df["item"].isin(shared)]
    acc = rows.groupby(["strategy", "seed"])["correct"].mean()
    out: dict[str, dict[int, float]] = {}
    for (strategy, seed), value in acc.items():
        out.setdefault(str(strategy), {})[int(seed)] = float(value)
    return out


def pooled_variance(accuracies: dict[str, dict[int, float]]) -> tuple[float, int]:
    """The run-to-run variance of accuracy pooled over every strategy with two or more seeds, and its df."""
    squares, df = 0.0, 0
    for strategy, by_seed in accuracies.items():
        values = np.array(list(by_seed.values()))
        if fixed(strategy) or values.size < 2:
            continue
        squares += float(((values - values.mean()) ** 2).sum())
        df += values.size - 1
    return (squares / df if df else math.nan), df


def holm(p_values: dict) -> dict:
    """Holm's step-down adjustment of a family of p-values (keys kept; NaN entries are not in the family).

    >>> {k: round(v, 3) for k, v in holm({"a": 0.01, "b": 0.04, "c": 0.03}).items()}
    {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    tested = sorted((p, k) for k, p in p_values.items() if p is not None and math.isfinite(p))
    m, running, out = len(tested), 0.0, {}
    for i, (p, key) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        out[key] = running
    return {k: out.get(k, math.nan) for k in p_values}


def _compare(x: dict[int, float], y: dict[int, float] | float, variance: float, df: int) -> tuple | str:
    """(delta, half-width, p, n) of x against y (a fixed value when y is a float), or why it is not testable."""
    n_x = len(x)
    n_y = None if isinstance(y, float) else len(y)
    if n_x < 2 or (n_y is not None and n_y < 2):
        return f"not testable with {min(n_x, n_y or n_x)} seed{'s' if min(n_x, n_y or n_x) != 1 else ''}"
    if not df or not math.isfinite(variance):
        return "not testable: no run-to-run variance (no strategy has two seeds)"
    mean_y = y if isinstance(y, float) else float(np.mean(list(y.values())))
    delta = float(np.mean(list(x.values()))) - mean_y
    se = math.sqrt(variance * (1 / n_x + (0 if n_y is None else 1 / n_y)))
    half = float(sps.t.ppf(1 - ALPHA / 2, df)) * se
    if se == 0:
        return delta, 0.0, (1.0 if delta == 0 else 0.0), n_x
    return delta, half, float(2 * sps.t.sf(abs(delta) / se, df)), n_x


def seed_verdicts(df: pd.DataFrame) -> dict[str, dict[str, SeedVerdict]]:
    """Per strategy: its ``vs_uniform`` and ``vs_base`` verdicts (those that apply), Holm-adjusted over the cell.

    ``df``: strategy, seed, item, correct of the cell's evaluated runs.
    """
    accuracies = run_accuracies(df)
    variance, dof = pooled_variance(accuracies)
    comparisons: dict[tuple[str, str], tuple | str] = {}
    for strategy in accuracies:
        for reference, key in ((REFERENCE, "vs_uniform"), (BASE, "vs_base")):
            if strategy == reference or reference not in accuracies:
                continue
            x, y = accuracies[strategy], accuracies[reference]
            if fixed(strategy):  # the base against uniform: uniform's runs against the base's constant, negated
                found = _compare(y, _constant(x), variance, dof)
                comparisons[(strategy, key)] = (-found[0], *found[1:]) if isinstance(found, tuple) else found
            else:
                comparisons[(strategy, key)] = _compare(x, _constant(y) if fixed(reference) else y, variance, dof)
    family = {_hypothesis(s, k): c[2] for (s, k), c in comparisons.items() if isinstance(c, tuple)}
    adjusted = holm(family)
    out: dict[str, dict[str, SeedVerdict]] = {}
    for (strategy, key), found in comparisons.items():
        if isinstance(found, str):
            verdict = SeedVerdict(math.nan, math.nan, math.nan, math.nan, math.nan, False, found,
                                  len(accuracies[strategy]), dof or None)
        else:
            delta, half, p, n = found
            p_adj = adjusted[_hypothesis(strategy, key)]
            verdict = SeedVerdict(delta, delta - half, delta + half, p, p_adj, bool(p_adj < ALPHA),
                                  f"{TEST} ({len(family)} comparisons)", n, dof)
        out.setdefault(strategy, {})[key] = verdict
    return out


def _constant(by_seed: dict[int, float]) -> float:
    return float(np.mean(list(by_seed.values())))


def _hypothesis(strategy: str, key: str) -> frozenset:
    """One comparison whichever side states it (uniform vs base is base vs uniform)."""
    return frozenset((strategy, REFERENCE if key == "vs_uniform" else BASE))


def power_of(delta: float, se: float, df: int, alpha: float) -> float:
    """Power of a two-sided t-test with ``df`` degrees of freedom to find a true difference ``delta``.

    The noncentral t's tails, integrated over the chi-square of the variance estimate: T = (Z + ncp) / sqrt(V/df),
    so P(T > c) = E[Phi(ncp - c sqrt(V/df))] (smooth everywhere; scipy's ``nct`` fails far in the tail).

    >>> round(power_of(0.05, 0.02, 30, 0.05), 3), round(power_of(0.1, 0.02, 30, 0.05), 3)
    (0.677, 0.998)
    """
    critical = float(sps.t.ppf(1 - alpha / 2, df))
    ncp = delta / se

    def at(v: float) -> float:
        scale = critical * math.sqrt(v / df)
        return (sps.norm.cdf(ncp - scale) + sps.norm.cdf(-ncp - scale)) * sps.chi2.pdf(v, df)

    low, high = sps.chi2.ppf([1e-12, 1 - 1e-12], df)  # where the variance estimate lives (quad needs to know)
    power, _ = integrate.quad(at, low, high, limit=200)
    return float(min(1.0, power))


def minimum_detectable(sd: float, n: int, df: int, alpha: float, power: float = POWER) -> float:
    """The smallest difference between two strategies of ``n`` seeds each found with ``power`` (inf: none).

    >>> round(100 * minimum_detectable(0.03, n=10, df=36, alpha=0.05), 1)
    3.9
    """
    se = sd * math.sqrt(2 / n)
    target: Callable[[float], float] = lambda delta: power_of(delta, se, df, alpha) - power  # noqa: E731
    high = 10 * se
    while target(high) < 0:
        high *= 4
        if high > 1e4 * se:
            return math.inf
    return float(optimize.brentq(target, 1e-12, high))


def _seeds_needed(sd: float, strategies: int, alpha: float, most: int = 200) -> int | None:
    """The fewest seeds per strategy whose detectable difference is at most the paper's gap (bisection: the
    detectable difference falls with every seed); None beyond ``most``."""
    def enough(k: int) -> bool:
        return minimum_detectable(sd, k, strategies * (k - 1), alpha) <= PAPER_GAP

    if not enough(most):
        return None
    low, high = 1, most  # enough(high), and with one seed nothing is testable
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def detectability(df: pd.DataFrame, verdicts: dict[str, dict[str, SeedVerdict]]) -> Detectability | None:
    """The cell's detectability from its runs (``df`` as for :func:`seed_verdicts`) and its family of
    ``verdicts``; None without a uniform run and a pooled run variance."""
    accuracies = run_accuracies(df)
    variance, dof = pooled_variance(accuracies)
    trained = {s: v for s, v in accuracies.items() if not fixed(s)}
    pooled = [s for s, v in trained.items() if len(v) >= 2]
    if REFERENCE not in trained or not dof:
        return None
    size = len({_hypothesis(s, k) for s, entries in verdicts.items() for k, v in entries.items()
                if math.isfinite(v.p_unadjusted)})
    alpha = ALPHA / max(1, size)
    n = min(len(v) for v in trained.values())
    sd = math.sqrt(variance)
    items = int(df.groupby(["strategy", "seed"])["item"].nunique().min())
    if sd == 0:
        return Detectability(0.0, dof, n, items, len(pooled), size, alpha, 0.0, PAPER_GAP, 2)
    mde = minimum_detectable(sd, n, dof, alpha)
    needed = _seeds_needed(sd, len(trained), alpha)
    return Detectability(sd, dof, n, items, len(pooled), size, alpha, mde, PAPER_GAP, needed)
