"""Calibration of the verdicts: how often they call a difference when there is none, and find one that is there.

Synthetic studies shaped like the laptop study's evaluation (the base model and four trained strategies, 512
items) with a known truth, each analysed exactly as a real study's eval table is
(:func:`dashboards.analysis.verdicts.seed_verdicts`):

- items of varied difficulty: the base model answers item i right with probability sigmoid(theta_i), theta_i ~
  N(-0.4, 1.5), once (greedy decoding of a fixed model);
- every trained run starts from the base's answers and flips some: item i flips with probability
  ``FLIP x 4 p_i (1 - p_i)`` (items near 50% flip most), wrong-to-right flips rescaled so that the flips balance;
- a random effect per run (seed x strategy): the run's balance tilts by a draw that moves its expected accuracy by
  N(0, RUN_SD), plus the strategy's planted effect (0 under the null). So under the null every trained run's
  expected accuracy is the base model's, and strategies are exchangeable.

Under the null the share of studies with *any* significant verdict (each strategy against uniform and against
the base model, Holm-corrected) must stay at 5% plus Monte-Carlo error. Beside it, the same studies judged as the
analysis judged them before (the item-level sign-flip test of :mod:`dashboards.analysis.items`, each comparison
at 0.05, no correction). With a planted 5-point effect on one strategy, the share of studies in which the
verdict finds it (its comparison with uniform significant), for 3, 5 and 10 seeds.

    python -m benchmarks.bench_calibration          # the table (about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd

from dashboards.analysis.items import sign_flip_p
from dashboards.analysis.verdicts import seed_verdicts
from orchestrator.core.roles import BASE, REFERENCE

TRAINED = (REFERENCE, "proportional", "random", "reduced")
ITEMS = 512
FLIP = 0.3
RUN_SD = 0.03  # run-to-run SD of a trained run's expected accuracy (the laptop study's pooled SD was 3.3 points,
# item-level noise included)
EFFECT = 0.05


def synthetic_eval(rng: np.random.Generator, seeds: int, effect: dict[str, float] | None = None,
                   items: int = ITEMS, run_sd: float = RUN_SD) -> pd.DataFrame:
    """One study's eval rows (strategy, seed, item, correct) under the module docstring's model."""
    effect = effect or {}
    p = 1 / (1 + np.exp(-rng.normal(-0.4, 1.5, items)))
    base = rng.random(items) < p
    weight = 4 * p * (1 - p)
    right, wrong = weight * base, weight * ~base
    balance = right.sum() / max(wrong.sum(), 1e-9)
    per_unit = 2 * FLIP * right.sum() / items  # accuracy moved by a tilt of 1
    rows = [pd.DataFrame({"strategy": BASE, "seed": 0, "item": np.arange(items), "correct": base})]
    for strategy in TRAINED:
        for seed in range(seeds):
            tilt = np.clip((rng.normal(0, run_sd) + effect.get(strategy, 0.0)) / per_unit, -1, 1)
            lose = FLIP * right * (1 - tilt)
            gain = FLIP * wrong * balance * (1 + tilt)
            flip = rng.random(items) < np.where(base, lose, gain)
            rows.append(pd.DataFrame({"strategy": strategy, "seed": seed, "item": np.arange(items),
                                      "correct": base ^ flip}))
    return pd.concat(rows, ignore_index=True)


def item_level_significant(df: pd.DataFrame, rng: np.random.Generator, draws: int = 2000) -> bool:
    """Any comparison significant by the item-level sign-flip test at 0.05 (the analysis' former verdict)."""
    means = {s: g.groupby("item")["correct"].mean() for s, g in df.groupby("strategy")}
    for strategy, per_item in means.items():
        for reference in (REFERENCE, BASE):
            if strategy != reference and not (strategy == BASE and reference == REFERENCE):
                d = (per_item - means[reference]).to_numpy(dtype=float)
                if sign_flip_p(d, rng, draws) < 0.05:
                    return True
    return False


def null_shares(studies: int, seeds: int, seed: int = 0) -> dict:
    """Share of null studies with any significant verdict: the seed-aware verdicts and the item-level tests."""
    rng = np.random.default_rng(seed)
    new = old = 0
    for _ in range(studies):
        df = synthetic_eval(rng, seeds)
        verdicts = seed_verdicts(df)
        new += any(v.significant for entries in verdicts.values() for v in entries.values())
        old += item_level_significant(df, rng)
    mc = math.sqrt(0.05 * 0.95 / studies)
    return {"studies": studies, "seeds": seeds, "any_significant": new / studies, "item_level_any": old / studies,
            "monte_carlo_se_at_5pct": round(mc, 4)}


def detection_rate(studies: int, seeds: int, effect: float = EFFECT, seed: int = 1) -> float:
    """Share of studies in which a planted ``effect`` on proportional is found against uniform."""
    rng = np.random.default_rng([seed, seeds])
    found = 0
    for _ in range(studies):
        verdicts = seed_verdicts(synthetic_eval(rng, seeds, {"proportional": -effect}))
        found += verdicts["proportional"]["vs_uniform"].significant
    return found / studies


def run(studies: int = 250) -> dict:
    result = {"null": [null_shares(studies, seeds) for seeds in (2, 3)],
              "detection_5_points": {str(s): detection_rate(studies, s) for s in (3, 5, 10)},
              "model": {"items": ITEMS, "run_sd": RUN_SD, "flip": FLIP, "strategies": [BASE, *TRAINED]}}
    bound = 0.05 + 2 * result["null"][0]["monte_carlo_se_at_5pct"]
    result["goal"] = f"any significant verdict under the null <= {bound:.3f} (5% + 2 Monte-Carlo SE)"
    result["within_goal"] = all(row["any_significant"] <= bound for row in result["null"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=250)
    print(json.dumps(run(parser.parse_args().studies), indent=2))


if __name__ == "__main__":
    main()
