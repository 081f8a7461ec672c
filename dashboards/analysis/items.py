"""Statistics that respect the design: the same test items are answered by every seed and every strategy.

Pooled Wilson intervals and pooled McNemar tests (:mod:`dashboards.analysis.training`, kept because the paper
uses them) treat a strategy's seeds x items outcomes as independent; they are not, so those intervals are too
narrow. Here the unit is the item: each item's correctness is averaged over the strategy's seeds, and

- the strategy's accuracy has a 95% percentile bootstrap interval over items (``item_ci_low``/``item_ci_high``);
- its difference to the reference (uniform) and to the base model is the mean over shared items of the paired
  per-item difference, with a bootstrap interval over items and a two-sided paired sign-flip permutation test
  (``vs_uniform`` / ``vs_base``: ``delta``, ``item_ci_low``, ``item_ci_high``, ``p_permutation``, ``n_items``);
- McNemar is run per seed against the reference run of the same seed (``mcnemar_per_seed``) and against the base
  model (``vs_base.p_mcnemar_per_seed``: one base answer per item, each seed's run against it).

These treat the runs as fixed, so they are descriptive: the verdicts (does a strategy differ?) are made over
seeds (:mod:`dashboards.analysis.verdicts`).

Resampling uses one generator per (strategy, comparison), seeded from the names, so the same study gives the
same numbers, and adding a strategy changes none of the others'.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd

from dashboards.analysis import stats as st
from orchestrator.core.roles import BASE, REFERENCE

BOOTSTRAP = 4000
PERMUTATIONS = 5000
RESAMPLING_SEED = 0


def bootstrap_mean_ci(values: np.ndarray, rng: np.random.Generator, draws: int = BOOTSTRAP) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` (NaN, NaN when there are none).

    >>> low, high = bootstrap_mean_ci(np.array([0.0, 1.0] * 50), np.random.default_rng(0))
    >>> 0.39 < low < 0.45 and 0.55 < high < 0.61
    True
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    means = values[rng.integers(0, values.size, size=(draws, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def sign_flip_p(differences: np.ndarray, rng: np.random.Generator, draws: int = PERMUTATIONS) -> float:
    """Two-sided paired permutation p-value of mean(differences) = 0: random sign flips per item.

    >>> rng = np.random.default_rng(0)
    >>> sign_flip_p(np.zeros(10), rng), sign_flip_p(np.ones(30), rng) < 0.001
    (1.0, True)
    """
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan
    observed = abs(d.mean())
    if observed == 0:
        return 1.0
    signs = rng.integers(0, 2, size=(draws, d.size), dtype=np.int8) * 2 - 1
    flipped = np.abs(signs @ d) / d.size
    return float((1 + np.count_nonzero(flipped >= observed - 1e-12)) / (1 + draws))


def item_means(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Per strategy: each item's correctness averaged over the strategy's seeds (index: item)."""
    return {str(s): g.groupby("item")["correct"].mean() for s, g in df.groupby("strategy", sort=False)}


def paired_difference(x: pd.Series, y: pd.Series, rng: np.random.Generator) -> dict:
    """x - y over the items both have: mean, bootstrap interval, sign-flip p, item count."""
    shared = x.index.intersection(y.index)
    d = (x.loc[shared] - y.loc[shared]).to_numpy(dtype=float)
    low, high = bootstrap_mean_ci(d, rng)
    return {"delta": float(d.mean()) if d.size else math.nan, "item_ci_low": low, "item_ci_high": high,
            "p_permutation": sign_flip_p(d, rng), "n_items": int(d.size)}


def mcnemar_per_seed(df: pd.DataFrame, strategy: str) -> dict[str, float]:
    """Exact McNemar p against the reference run of the same seed, one per seed both have."""
    mine = df.loc[df["strategy"] == strategy, ["seed", "item", "correct"]]
    ref = df.loc[df["strategy"] == REFERENCE, ["seed", "item", "correct"]]
    # One join over (seed, item) for all seeds: a join per seed cost ~50 ms a strategy, most of the item
    # statistics' time on a 5-seed grid.
    pairs = mine.merge(ref, on=["seed", "item"], suffixes=("", "_ref"))
    b = (pairs["correct"] & ~pairs["correct_ref"]).groupby(pairs["seed"]).sum()
    c = (~pairs["correct"] & pairs["correct_ref"]).groupby(pairs["seed"]).sum()
    shared = sorted(set(mine["seed"].tolist()) & set(ref["seed"].tolist()))
    return {str(int(seed)): st.mcnemar_exact(int(b.get(seed, 0)), int(c.get(seed, 0))) for seed in shared}


def mcnemar_vs_base(df: pd.DataFrame, strategy: str) -> dict[str, float]:
    """Exact McNemar p of each seed's run of ``strategy`` against the base model's answers (the base model is
    evaluated once: greedy decoding does not depend on the seed), per seed."""
    base = df[df["strategy"] == BASE][["item", "correct"]].drop_duplicates("item")
    pairs = df[df["strategy"] == strategy][["seed", "item", "correct"]].merge(base, on="item", suffixes=("", "_base"))
    b = (pairs["correct"] & ~pairs["correct_base"]).groupby(pairs["seed"]).sum()
    c = (~pairs["correct"] & pairs["correct_base"]).groupby(pairs["seed"]).sum()
    return {str(int(seed)): st.mcnemar_exact(int(b.get(seed, 0)), int(c.get(seed, 0)))
            for seed in sorted(pairs["seed"].unique())}


def _rng(*names: str) -> np.random.Generator:
    """The resampling generator of one (strategy, comparison): seeded from their names only."""
    return np.random.default_rng([RESAMPLING_SEED, *(zlib.crc32(name.encode()) for name in names)])


def item_statistics(df: pd.DataFrame) -> dict[str, dict]:
    """Per strategy, the item-level numbers of the module doc (``vs_uniform`` / ``vs_base`` as plain dicts, which
    the verdicts complete). ``df``: strategy, seed, item, correct (bool)."""
    means = item_means(df)
    out: dict[str, dict] = {}
    for strategy, per_item in means.items():
        low, high = bootstrap_mean_ci(per_item.to_numpy(dtype=float), _rng(strategy))
        entry = {"item_accuracy": float(per_item.mean()), "item_ci_low": low, "item_ci_high": high,
                 "n_items": int(per_item.size)}
        for name, key in ((REFERENCE, "vs_uniform"), (BASE, "vs_base")):
            if strategy != name and name in means:
                entry[key] = paired_difference(per_item, means[name], _rng(strategy, key))
        if "vs_base" in entry:
            entry["vs_base"]["p_mcnemar_per_seed"] = mcnemar_vs_base(df, strategy)
        if strategy != REFERENCE and REFERENCE in means:
            entry["mcnemar_per_seed"] = mcnemar_per_seed(df, strategy)
        out[strategy] = entry
    return out
